//! `on_open` and `on_close`: the commands a sequence runs when a source is authorized
//! and when that ends (knockd's start_command and stop_command).
//!
//! No shell is involved. A template is split into arguments once, when the config is
//! loaded (shell quoting rules), and `%IP%`, `%SEQUENCE%` and `%PORTS%` are replaced
//! inside each argument afterwards, so no address or name can add an argument or run
//! anything. Commands are children of `run`: at most `max_running` at once, the rest
//! in a bounded queue (a command that finds it full is dropped with a warning), each
//! killed with everything it started after `timeout`. The event loop only queues.

use std::{
    collections::{HashMap, VecDeque},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, BufReader};

use crate::{
    clock::human,
    config::{
        CommandLimits, Config,
        template::{Template, Vars},
    },
    daemon::event::{Event, Kind},
    net::is_martian,
};

/// Longer output lines are logged in pieces of this many bytes.
const MAX_LINE: u64 = 4096;

/// What became of the commands, for the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub succeeded: AtomicU64,
    /// Exited non-zero, killed by a signal, or could not be started.
    pub failed: AtomicU64,
    /// Killed after the timeout.
    pub timed_out: AtomicU64,
    /// Not run: the queue was full.
    pub dropped: AtomicU64,
}

/// One command to run: its arguments and what the log calls it.
struct Job {
    label: String,
    argv: Vec<String>,
}

#[derive(Default)]
struct Queue {
    running: usize,
    waiting: VecDeque<Job>,
}

struct Shared {
    limits: CommandLimits,
    queue: Mutex<Queue>,
    stats: Arc<Stats>,
}

/// Runs commands in the background, within the limits of `[commands]`.
#[derive(Clone)]
pub struct Runner {
    shared: Arc<Shared>,
}

impl Runner {
    pub fn new(limits: CommandLimits) -> Runner {
        Runner {
            shared: Arc::new(Shared {
                limits,
                queue: Mutex::default(),
                stats: Arc::default(),
            }),
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// (running, waiting).
    pub fn pending(&self) -> (usize, usize) {
        let q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (q.running, q.waiting.len())
    }

    /// Starts `argv` now if fewer than `max_running` run, else queues it, else drops
    /// it. Never waits; must be called inside the tokio runtime.
    fn submit(&self, label: String, argv: Vec<String>) {
        let limits = self.shared.limits;
        let job = Job { label, argv };
        let mut q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.running < limits.max_running {
            q.running += 1;
            drop(q);
            tokio::spawn(work(self.shared.clone(), job));
        } else if q.waiting.len() < limits.max_queued {
            log::debug!("{}: queued behind {} running command(s)", job.label, q.running);
            q.waiting.push_back(job);
        } else {
            drop(q);
            self.shared.stats.dropped.fetch_add(1, Relaxed);
            log::warn!(
                "{}: not run: {} command(s) running and {} queued (commands.max_running, commands.max_queued)",
                job.label,
                limits.max_running,
                limits.max_queued
            );
        }
    }
}

/// Runs `job`, then whatever waits in the queue, until it is empty.
async fn work(shared: Arc<Shared>, mut job: Job) {
    loop {
        let counter = match run_one(&job, shared.limits.timeout).await {
            Outcome::Succeeded => &shared.stats.succeeded,
            Outcome::Failed => &shared.stats.failed,
            Outcome::TimedOut => &shared.stats.timed_out,
        };
        counter.fetch_add(1, Relaxed);
        let mut q = shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(next) = q.waiting.pop_front() {
            job = next;
        } else {
            q.running -= 1;
            return;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
}

/// Runs one command to its end or its timeout, logging its output and how it ended.
async fn run_one(job: &Job, timeout: Duration) -> Outcome {
    let label = &job.label;
    let mut child = match tokio::process::Command::new(&job.argv[0])
        .args(&job.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills what it started too, and a Ctrl-C
        // meant for `run` does not reach it.
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            log::error!("{label}: cannot start {}: {e}", job.argv[0]);
            return Outcome::Failed;
        }
    };
    let pid = child.id();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    // Done when the command has exited and nothing it started holds its output open.
    let finished = async {
        let (status, (), ()) = tokio::join!(
            child.wait(),
            log_lines(stdout, label, "stdout"),
            log_lines(stderr, label, "stderr")
        );
        status
    };
    let Ok(status) = tokio::time::timeout(timeout, finished).await else {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: signals the process group the command leads (its pid is
            // not reused while the group has members).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        log::warn!(
            "{label}: still running after {} (commands.timeout): killed, with what it started",
            human(timeout)
        );
        // Reaps it (the exit status is remembered if it had already exited).
        let _ = child.wait().await;
        return Outcome::TimedOut;
    };
    match status {
        Ok(s) if s.success() => {
            log::info!("{label}: {}: {s}", job.argv[0]);
            Outcome::Succeeded
        }
        Ok(s) => {
            log::warn!("{label}: {}: {s}", job.argv[0]);
            Outcome::Failed
        }
        Err(e) => {
            log::error!("{label}: cannot wait for {}: {e}", job.argv[0]);
            Outcome::Failed
        }
    }
}

/// Logs each line of a command's output (in pieces of MAX_LINE bytes).
async fn log_lines(stream: Option<impl AsyncRead + Unpin>, label: &str, which: &str) {
    let Some(stream) = stream else { return };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                log::info!("{label}: {which}: {}", text.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

/// A sequence's commands and the value of `%PORTS%` for it.
struct Hooks {
    on_open: Option<Template>,
    on_close: Option<Template>,
    ports: String,
}

/// Each sequence's commands, by name.
fn hooks(config: &Config) -> HashMap<String, Hooks> {
    config
        .sequences
        .iter()
        .filter(|s| s.on_open.is_some() || s.on_close.is_some())
        .map(|s| {
            let ports: Vec<String> = s.protect.iter().map(ToString::to_string).collect();
            let hooks = Hooks {
                on_open: s.on_open.clone(),
                on_close: s.on_close.clone(),
                ports: ports.join(","),
            };
            (s.name.clone(), hooks)
        })
        .collect()
}

/// The configured commands by sequence name, and the runner they go to.
pub struct Commands {
    hooks: HashMap<String, Hooks>,
    runner: Runner,
}

impl Commands {
    pub fn new(config: &Config) -> Commands {
        Commands {
            hooks: hooks(config),
            runner: Runner::new(config.commands),
        }
    }

    /// Takes the commands of a reloaded config; the runner, its limits and what it
    /// runs or queues stay.
    pub fn set_hooks(&mut self, config: &Config) {
        if config.commands != self.runner.shared.limits {
            log::warn!("[commands] changed: the new limits take effect when run restarts");
        }
        self.hooks = hooks(config);
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// For an `open` or `close`: starts or queues its sequence's command, if it has
    /// one. (A time-based sequence's two kernel slots share its name.)
    pub fn event(&self, event: &Event) {
        let (key, sequence) = match &event.kind {
            Kind::Open { sequence, .. } => ("on_open", sequence),
            Kind::Close { sequence, .. } => ("on_close", sequence),
            _ => return,
        };
        let Some(hooks) = self.hooks.get(sequence) else {
            return;
        };
        let template = if key == "on_open" {
            &hooks.on_open
        } else {
            &hooks.on_close
        };
        let Some(template) = template else { return };
        // Never authorized, so never an %IP% (defence in depth: the kernel and `allow`
        // refuse them already).
        if is_martian(event.source) {
            log::warn!(
                "{key} of {sequence} not run: {} is a martian source",
                event.source
            );
            return;
        }
        let ip = event.source.to_string();
        let vars = Vars {
            ip: &ip,
            sequence,
            ports: &hooks.ports,
        };
        self.runner
            .submit(format!("{key} {sequence} {ip}"), template.argv(&vars));
    }

    /// Says what is left at shutdown: queued commands are not run, running ones are
    /// left to finish on their own.
    pub fn shutdown(&self) {
        let (running, waiting) = self.runner.pending();
        if running + waiting > 0 {
            log::warn!(
                "exiting with {running} command(s) still running (left to finish) and {waiting} queued (not run)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Instant};

    use super::*;

    #[test]
    fn ports_are_every_protected_port_of_the_sequence() {
        let toml = "[[sequence]]\nname = \"ssh\"\nknocks = [\"7000\"]\nprotect = [\"22/tcp\", \"443/tcp\"]\n\
                    on_open = \"/bin/true %PORTS%\"\n[[sequence]]\nname = \"quiet\"\nknocks = [\"8000\"]\n\
                    protect = [\"22/tcp\"]\n";
        let config = Config::parse(Path::new("t.toml"), toml).expect("valid");
        let hooks = hooks(&config);
        assert_eq!(hooks["ssh"].ports, "22/tcp,443/tcp");
        assert!(!hooks.contains_key("quiet"), "no commands, no hooks");
    }

    const VARS: Vars = Vars {
        ip: "198.18.0.1",
        sequence: "ssh",
        ports: "22/tcp,443/tcp",
    };

    fn argv(template: &str, vars: &Vars) -> Vec<String> {
        Template::parse(template).expect("valid").argv(vars)
    }

    #[test]
    fn splits_with_shell_quoting_then_substitutes_inside_each_argument() {
        assert_eq!(
            argv(
                "/usr/local/bin/notify %IP% 'opened %SEQUENCE%' \"ports: %PORTS%\" 100%",
                &VARS
            ),
            [
                "/usr/local/bin/notify",
                "198.18.0.1",
                "opened ssh",
                "ports: 22/tcp,443/tcp",
                "100%"
            ]
        );
        assert_eq!(
            argv("/bin/x --from=%IP%:%IP% %ip% %PORTS", &VARS),
            ["/bin/x", "--from=198.18.0.1:198.18.0.1", "%ip%", "%PORTS"],
            "only the exact placeholders"
        );
        assert_eq!(
            Template::parse("  /bin/x  'a b'  ").expect("valid").to_string(),
            "  /bin/x  'a b'  ",
            "shown as written"
        );
    }

    #[test]
    fn a_hostile_value_stays_one_argument_and_is_never_interpreted() {
        for hostile in [
            "1.2.3.4; touch /tmp/pwned",
            "$(reboot)",
            "`reboot`",
            "a b\tc\nd",
            "' \" \\",
            "%SEQUENCE% %PORTS%",
            "--help",
        ] {
            let vars = Vars {
                ip: hostile,
                sequence: hostile,
                ports: "22/tcp",
            };
            let out = argv("/bin/notify %IP% --seq=%SEQUENCE%", &vars);
            assert_eq!(out.len(), 3, "{hostile:?}: {out:?}");
            assert_eq!(out[1], hostile, "the value as it is, not expanded again");
            assert_eq!(out[2], format!("--seq={hostile}"));
        }
    }

    #[test]
    fn refusals() {
        for (template, want) in [
            ("", "empty"),
            ("   ", "empty"),
            ("notify %IP%", "not an absolute path"),
            ("./notify", "not an absolute path"),
            ("/bin/x 'unclosed", "cannot be split"),
            ("/bin/x trailing\\", "cannot be split"),
            ("/opt/%SEQUENCE%/run", "fixed path"),
            ("%IP%", "fixed path"),
            ("/bin/x \0", "NUL"),
        ] {
            let err = Template::parse(template).expect_err(template);
            assert!(err.contains(want), "{template:?}: {err}");
        }
    }

    fn limits(timeout_ms: u64, max_running: usize, max_queued: usize) -> CommandLimits {
        CommandLimits {
            timeout: Duration::from_millis(timeout_ms),
            max_running,
            max_queued,
        }
    }

    fn job(argv: &[&str]) -> Job {
        Job {
            label: "test".into(),
            argv: argv.iter().map(ToString::to_string).collect(),
        }
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("finished");
        // The grandchild writes the marker: killing only the shell would not stop it.
        let script = format!("(/bin/sleep 1; /usr/bin/touch {}) & wait", marker.display());
        let start = Instant::now();
        let outcome = run_one(&job(&["/bin/sh", "-c", &script]), Duration::from_millis(200)).await;
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        assert_eq!(
            run_one(&job(&["/bin/true"]), Duration::from_secs(5)).await,
            Outcome::Succeeded
        );
        assert_eq!(
            run_one(&job(&["/bin/false"]), Duration::from_secs(5)).await,
            Outcome::Failed
        );
        assert_eq!(
            run_one(&job(&["/nonexistent/program"]), Duration::from_secs(5)).await,
            Outcome::Failed
        );
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(!marker.exists(), "the shell and what it started were killed");
    }

    #[tokio::test]
    async fn beyond_max_running_commands_queue_and_beyond_the_queue_they_are_dropped() {
        let runner = Runner::new(limits(5000, 2, 1));
        for _ in 0..5 {
            runner.submit("test".into(), vec!["/bin/sleep".into(), "0.2".into()]);
        }
        assert_eq!(runner.pending(), (2, 1));
        let stats = runner.stats();
        assert_eq!(stats.dropped.load(Relaxed), 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        while runner.pending() != (0, 0) {
            assert!(Instant::now() < deadline, "still pending: {:?}", runner.pending());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            stats.succeeded.load(Relaxed),
            3,
            "two at once, then the queued one"
        );
    }

    #[tokio::test]
    async fn a_martian_source_never_runs_a_command() {
        let toml = "[[sequence]]\nname = \"ssh\"\nknocks = [\"7000\"]\nprotect = [\"22/tcp\"]\n\
                    on_open = \"/bin/true %IP%\"\non_close = \"/bin/true %IP%\"\n";
        let config = Config::parse(Path::new("t.toml"), toml).expect("valid");
        let commands = Commands::new(&config);
        let line = |event: &'static str, source: &str| Event {
            at: std::time::SystemTime::now(),
            source: source.parse().expect("addr"),
            port: None,
            kind: if event == "open" {
                Kind::Open {
                    sequence: "ssh".into(),
                    reason: crate::daemon::event::Opener::Allow,
                    open_for: Duration::from_secs(1),
                    client: None,
                    origin: None,
                }
            } else {
                Kind::Close {
                    sequence: "ssh".into(),
                    reason: crate::daemon::event::CloseReason::Expired,
                    origin: None,
                }
            },
        };
        for martian in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "ff02::1",
        ] {
            commands.event(&line("open", martian));
            commands.event(&line("close", martian));
        }
        assert_eq!(commands.runner().pending(), (0, 0), "nothing started or queued");
        commands.event(&line("open", "198.18.0.1"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while commands.runner().pending() != (0, 0) {
            assert!(Instant::now() < deadline, "still pending");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stats = commands.runner().stats();
        assert_eq!(
            stats.succeeded.load(Relaxed),
            1,
            "only the real source's command ran"
        );
    }
}
