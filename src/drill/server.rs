//! The drill's throwaway PostgreSQL: the server binaries of the backup's
//! major version, and a postmaster run from the scratch directory on a Unix
//! socket only (no TCP listener), archiving off, stopped (immediately) and
//! its directory removed however the drill ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::DrillError;

/// Where the server binaries of one major version are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
    pub major: u32,
}

impl Binaries {
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The binaries for PostgreSQL `major`: `given` (`--pg-bin`, `pg_bin`)
    /// when set, else the first of PATH, `pg_config --bindir` and Debian's
    /// `/usr/lib/postgresql/<major>/bin` whose `postgres` is that major.
    pub fn find(major: u32, given: Option<&Path>) -> Result<Binaries, DrillError> {
        let mut seen = Vec::new();
        let candidates: Vec<PathBuf> = match given {
            Some(dir) => vec![dir.to_path_buf()],
            None => {
                let mut c: Vec<PathBuf> = std::env::var_os("PATH")
                    .map(|p| std::env::split_paths(&p).collect())
                    .unwrap_or_default();
                if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
                    && out.status.success()
                {
                    c.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
                }
                c.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
                c
            }
        };
        for dir in candidates {
            let postgres = dir.join("postgres");
            if !postgres.is_file() {
                continue;
            }
            match version_of(&postgres) {
                Some(v) if v == major => return Ok(Binaries { dir, major }),
                Some(v) => seen.push(format!("{} is PostgreSQL {v}", postgres.display())),
                None => seen.push(format!("{} did not say its version", postgres.display())),
            }
        }
        Err(DrillError::NoBinaries {
            major,
            seen: if seen.is_empty() {
                "no postgres binary found".into()
            } else {
                seen.join("; ")
            },
        })
    }
}

/// The major version `postgres --version` reports.
fn version_of(postgres: &Path) -> Option<u32> {
    let out = Command::new(postgres).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let v = text.split_whitespace().nth(2)?;
    v.split('.').next()?.parse().ok()
}

/// The port of the Unix socket (`.s.PGSQL.<port>` in the socket directory,
/// which is the drill's own).
pub const PORT: u16 = 5432;

/// A postmaster running from a scratch data directory; stopped
/// (immediately: nothing in it is worth a checkpoint) on drop.
pub struct Server {
    bin: Binaries,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    log: PathBuf,
    running: bool,
}

impl Server {
    /// Adds the drill's settings to the restored directory and starts it.
    /// `socket_dir` must be short (Unix socket paths are limited).
    pub fn start(
        bin: &Binaries,
        data: &Path,
        socket_dir: &Path,
        log: &Path,
    ) -> Result<Server, DrillError> {
        let settings = format!(
            "\n# Added by cairn drill: a throwaway server that never archives\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             port = {PORT}\n\
             archive_mode = off\n\
             hot_standby = off\n\
             shared_buffers = '64MB'\n\
             jit = off\n\
             max_wal_size = '4GB'\n\
             logging_collector = off\n",
            socket_dir.display().to_string().replace('\'', "''")
        );
        let auto = data.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&auto).map_err(|e| DrillError::io(&auto, e))?;
        conf.push_str(&settings);
        crate::durable::write_file(&auto, conf.as_bytes(), crate::durable::Durability::Atomic)
            .map_err(|e| DrillError::io(&auto, e))?;
        let out = Command::new(bin.tool("pg_ctl"))
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(log)
            // Do not wait: recovery may take long; the drill watches it.
            .args(["-W", "start"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| DrillError::io(&bin.tool("pg_ctl"), e))?;
        if !out.status.success() {
            return Err(DrillError::Server(format!(
                "pg_ctl start failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Server {
            bin: bin.clone(),
            data: data.to_path_buf(),
            socket_dir: socket_dir.to_path_buf(),
            log: log.to_path_buf(),
            running: true,
        })
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for errors.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join(" | ")
    }

    /// Whether the postmaster is alive.
    pub fn alive(&self) -> bool {
        let pid_file = self.data.join("postmaster.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
        else {
            return false;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    /// Stops the server now (no checkpoint).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let _ = Command::new(self.bin.tool("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "60", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Waits for the postmaster to write its pid file, or for it to die.
    pub fn wait_started(&self, timeout: Duration) -> Result<(), DrillError> {
        let deadline = Instant::now() + timeout;
        while !self.data.join("postmaster.pid").exists() {
            if Instant::now() > deadline {
                return Err(DrillError::Server(format!(
                    "the server did not start: {}",
                    self.log_tail(5)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The PostgreSQL major version of `server_version_num` (150004 → 15).
pub fn major_of(version_num: u32) -> u32 {
    version_num / 10000
}
