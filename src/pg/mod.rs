//! PostgreSQL knowledge: WAL positions, file names and page headers.
//! Nothing here does I/O; callers hand in names and bytes.

pub mod wal;
