//! PostgreSQL knowledge: WAL positions, file names and page headers (`wal`), what
//! a data directory holds and what a backup leaves out (`datadir`), page headers for
//! deltas (`page`), and the SQL
//! session a backup runs on (`client`). No I/O beyond what a module names.

pub mod client;
pub mod datadir;
pub mod page;
pub mod timeline;
pub mod wal;
