//! Jobs: requests and plans walked through the edges, deciding with the core.

pub mod adoption;
pub mod approve;
pub mod catalog;
pub mod contents;
pub mod deploy;
pub mod egress;
pub mod history;
pub mod init;
pub mod migrate;
pub mod readiness;
pub mod repair;
pub mod sign;
pub mod status;
pub mod verify;
pub mod verify_blob;
pub mod watch;
