//! PostgreSQL knowledge: WAL positions, file names and page headers (`wal`), what
//! a data directory holds and what a backup leaves out (`datadir`), page headers for
//! deltas (`page`), timeline histories (`timeline`), the SQL
//! session a backup runs on (`client`) and the replication connection a remote
//! backup streams over (`replication`). No I/O beyond what a module names.

pub mod client;
pub mod datadir;
pub mod page;
pub mod replication;
pub mod timeline;
pub mod wal;
