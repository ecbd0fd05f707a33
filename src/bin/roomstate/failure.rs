//! The CLI's failures, split the way the exit code reports them.

/// A failure, split the way the exit code reports it.
pub enum Failure {
    /// The user's doing: bad input, an unknown ID. Exit code 1.
    User(String),
    /// The store's: I/O, corruption. Exit code 2.
    Store(String),
    /// A panic inside the store, which the panic hook has already reported in one line. Exit
    /// code 2.
    Reported,
}

impl From<roomstate::Error> for Failure {
    fn from(e: roomstate::Error) -> Self {
        if matches!(e, roomstate::Error::Damaged(_)) {
            Failure::Reported
        } else if e.is_user_error() {
            Failure::User(e.to_string())
        } else {
            Failure::Store(e.to_string())
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::User("output closed".into())
        } else {
            Failure::Store(format!("I/O error: {e}"))
        }
    }
}

pub type CliResult<T = ()> = Result<T, Failure>;
