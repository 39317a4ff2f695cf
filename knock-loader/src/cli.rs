//! The command line: the clap definitions (what `--help`, man pages and completions
//! are made from), and each command as a named function in a module by theme:
//! `filter` operates the running filter, `check` the configuration, `keys` makes keys
//! and secrets, `client` knocks and sends SPA requests, `migrate` imports knockd's
//! configuration. `xknock run` is `daemon::run`.

pub mod check;
pub mod client;
#[cfg(feature = "daemon")]
pub mod filter;
pub mod keys;
pub mod migrate;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[cfg(feature = "daemon")]
use crate::daemon;
use crate::{client::Family, config::DEFAULT_PIN_DIR};

/// A port-knocking firewall in XDP: protected ports stay silently closed to every
/// source that has not first knocked the right sequence.
#[derive(Parser)]
#[command(name = "xknock", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `--pin-dir`, shared by every command that works on a running filter.
#[derive(Clone, Debug, clap::Args)]
pub struct Pins {
    /// Where `run` pinned the maps (how it is found).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// `-4` and `-6`, shared by the commands that resolve a server's name.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct FamilyArgs {
    /// Use IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 only.
    #[arg(short = '6')]
    pub ipv6: bool,
}

impl FamilyArgs {
    pub fn family(self) -> Family {
        match (self.ipv4, self.ipv6) {
            (true, _) => Family::V4,
            (_, true) => Family::V6,
            _ => Family::Any,
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Load and attach the filter, print events until SIGINT/SIGTERM, then detach.
    ///
    /// Needs root (CAP_BPF and CAP_NET_ADMIN). The program, its link to each interface
    /// and its maps are pinned under the pin directory: if `run` dies, filtering goes
    /// on, and the next `run` (also of a newer xknock whose maps have the same layout)
    /// adopts the pinned state (authorizations, progress) and swaps its program in
    /// without a gap. SIGHUP (or `xknock reload`) re-reads the config: invalid, it is
    /// refused and the running one stays. An interface that is missing, or deleted and
    /// created again, is attached when it appears. SIGINT/SIGTERM detach (unless
    /// --keep-attached); the maps stay pinned for the next `run` (`xknock down`
    /// removes them).
    ///
    /// A sequence's on_open and on_close commands run on its open and close events,
    /// without a shell, at most [commands] max_running at once, each killed after
    /// [commands] timeout; their output and exit status go to the log (stderr).
    #[cfg(feature = "daemon")]
    Run(daemon::RunOptions),
    /// Ask the running `xknock run` to re-read its config (sends it SIGHUP).
    ///
    /// `run` logs whether the new config took; an invalid one is refused whole and
    /// the running one stays in force. `xknock check` tells beforehand.
    #[cfg(feature = "daemon")]
    Reload(Pins),
    /// Remove the filter for good: the links (so nothing filters any more), the
    /// program and the pinned maps with every authorization and progress.
    ///
    /// Refused while an `xknock run` uses them: stop it first.
    #[cfg(feature = "daemon")]
    Down(Pins),
    /// Show sequences, sources in progress, authorized sources and counters.
    #[cfg(feature = "daemon")]
    Status(filter::StatusArgs),
    /// Authorize ADDR for a sequence as if it had knocked.
    #[cfg(feature = "daemon")]
    Allow(filter::AllowArgs),
    /// Remove ADDR's authorizations (all, or one sequence's) and its kept connections.
    #[cfg(feature = "daemon")]
    Revoke(filter::RevokeArgs),
    /// Lift ADDR's ban (brute-force lockout) and forget its failures.
    #[cfg(feature = "daemon")]
    Unban(filter::UnbanArgs),
    /// Make the secret of a time-based knock sequence: the server's `secret_file`
    /// and the client's `xknock knock --secret` (the same file on both).
    ///
    /// Example: xknock secret --out ssh.secret --period 30s --knocks 3 --ports 20000-40000
    Secret(keys::SecretArgs),
    /// Validate a configuration file and print what it sets up.
    Check(check::CheckArgs),
    /// Send a knock sequence to HOST (no privileges needed).
    ///
    /// Example: xknock knock server.example 7000 8000/udp 9000
    ///
    /// With --secret, the knocks of a time-based sequence for the current period:
    /// xknock knock server.example --secret ssh.secret
    Knock(client::KnockArgs),
    /// Send a Single Packet Authorization request (no privileges needed).
    ///
    /// One UDP datagram, encrypted and authenticated with the key file's key, asks the
    /// server to open sequences for this host's address. Nothing comes back, whatever
    /// the server decides: connect afterwards. The server refuses a request more than
    /// its window (30s by default) off its clock, so keep this host's clock right.
    ///
    /// Example: xknock spa server.example --key ~/.config/xknock/alice.key --open ssh
    Spa(client::SpaArgs),
    /// Translate a knockd configuration (knockd.conf) into xknock's TOML.
    ///
    /// Sequences, seq_timeout, tcpflags and one_time_sequences carry over. A command
    /// that adds an iptables or nft rule accepting the knocker (%IP%) on some ports
    /// becomes the sequence's protected ports, cmd_timeout its open_for; knockd's pair
    /// of doors, one adding such a rule and one deleting it, becomes one sequence.
    /// Other commands become on_open and on_close (%IP% kept), unless they need a
    /// shell. What does not translate is listed on stderr, as "line N: KEY: not
    /// translated: WHY", and as comments in the TOML.
    ///
    /// Example: xknock import-knockd /etc/knockd.conf --out /etc/xknock/xknock.toml
    ImportKnockd(migrate::ImportKnockdArgs),
    /// Translate a fwknopd server's access.conf (and fwknopd.conf) into xknock's TOML.
    ///
    /// Each stanza becomes a [[spa.fwknop]] client with its keys, HMAC digest,
    /// MAX_FW_TIMEOUT (max_open) and REQUIRE_SOURCE_ADDRESS (behind_nat); each
    /// distinct OPEN_PORTS set (with its FW_ACCESS_TIMEOUT) a sequence without
    /// knocks; fwknopd.conf's UDP port and MAX_SPA_PACKET_AGE the [spa] port and
    /// window. The clients' `fwknop` command lines work unchanged (with HMAC). What
    /// does not translate is listed on stderr, as "FILE line N: KEY: not translated:
    /// WHY", and as comments in the TOML. The TOML holds keys: --out writes it with
    /// mode 0600.
    ///
    /// Example: xknock import-fwknopd /etc/fwknop/access.conf --fwknopd-conf /etc/fwknop/fwknopd.conf --out /etc/xknock/xknock.toml
    ImportFwknopd(migrate::ImportFwknopdArgs),
    /// Make a key for a new SPA client.
    ///
    /// Prints the server's [[spa.client]] stanza on stdout (add it to the server's
    /// config), and writes the client's key file to --out (a new file, mode 0600), or
    /// prints that too when --out is not given. Both hold the secret key.
    ///
    /// Example: xknock keygen --name alice --sequence ssh --server server.example --out alice.key
    Keygen(keys::KeygenArgs),
    /// Print the shell completion script for SHELL (bash, zsh or fish) on stdout.
    ///
    /// The Debian package installs them. By hand, for bash:
    /// xknock completions bash > /etc/bash_completion.d/xknock
    Completions(CompletionsArgs),
}

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell the script is for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells completions are made for.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Command {
    /// Runs the command.
    pub fn run(self) -> Result<()> {
        match self {
            #[cfg(feature = "daemon")]
            Command::Run(opts) => daemon::run(opts),
            #[cfg(feature = "daemon")]
            Command::Reload(pins) => filter::reload(&pins),
            #[cfg(feature = "daemon")]
            Command::Down(pins) => filter::down(&pins),
            #[cfg(feature = "daemon")]
            Command::Status(args) => filter::status(&args),
            #[cfg(feature = "daemon")]
            Command::Allow(args) => filter::allow(&args),
            #[cfg(feature = "daemon")]
            Command::Revoke(args) => filter::revoke(&args),
            #[cfg(feature = "daemon")]
            Command::Unban(args) => filter::unban(&args),
            Command::Secret(args) => keys::secret(args),
            Command::Check(args) => check::check(&args),
            Command::Knock(args) => client::knock(args),
            Command::Spa(args) => client::spa(args),
            Command::ImportKnockd(args) => migrate::import_knockd(&args),
            Command::ImportFwknopd(args) => migrate::import_fwknopd(&args),
            Command::Keygen(args) => keys::keygen(args),
            Command::Completions(args) => {
                completions(args.shell);
                Ok(())
            }
        }
    }
}

/// The completion script for `shell`, from the same definitions as `--help`.
fn completions(shell: Shell) {
    use clap_complete::Shell as S;
    let shell = match shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
    };
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "xknock", &mut std::io::stdout());
}
