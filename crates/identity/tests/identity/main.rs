//! Identity's tests, one binary: accounts, sessions, members and
//! invitations on both backends, and email delivery to a real SMTP server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod accounts;
mod smtp;
