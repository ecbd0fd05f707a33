//! Two reads of one transaction side by side, on the machine's second core.

use crate::error::Result;

/// Runs `a` and `b`, `a` on a thread of its own when `parallel`, and returns both results or
/// the first error. A panic in `a` (redb on a damaged page) is [`crate::Error::Damaged`].
pub(crate) fn both<A: Send, B>(
    parallel: bool,
    a: impl FnOnce() -> Result<A> + Send,
    b: impl FnOnce() -> Result<B>,
) -> Result<(A, B)> {
    if !parallel {
        return Ok((a()?, b()?));
    }
    crossbeam::thread::scope(|scope| {
        let a = scope.spawn(|_| a());
        let b = b();
        let a = a.join().map_err(crate::error::damaged)?;
        Ok((a?, b?))
    })
    .map_err(crate::error::damaged)?
}
