//! One module per subcommand, and the context they share.

pub mod adopt;
pub mod approve;
pub mod check;
pub mod context;
pub mod deploy;
pub mod history;
pub mod init;
pub mod keys;
pub mod prove;
pub mod receipts;
pub mod release;
pub mod repair;
pub mod sign;
pub mod state;
pub mod status;
pub mod verify;
pub mod watch;
