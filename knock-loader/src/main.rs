//! The `xknock` command line.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use xknock::{
    client::{self, Family},
    config::{Config, DEFAULT_PIN_DIR, Knock, is_plain_name},
    maps::State,
    pins,
    run::{self, RunOptions},
    spa::{self, Access, ClientKey, Key, KeyId},
    status::Status,
    timed::TimedSecret,
};

/// A port-knocking firewall in XDP: protected ports stay silently closed to every
/// source that has not first knocked the right sequence.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--pin-dir`, shared by every command that works on a running filter.
#[derive(clap::Args)]
struct Pins {
    /// Where `run` pinned the maps (how it is found).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
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
    Run(RunOptions),
    /// Ask the running `xknock run` to re-read its config (sends it SIGHUP).
    ///
    /// `run` logs whether the new config took; an invalid one is refused whole and
    /// the running one stays in force. `xknock check` tells beforehand.
    Reload {
        #[command(flatten)]
        pins: Pins,
    },
    /// Remove the filter for good: the links (so nothing filters any more), the
    /// program and the pinned maps with every authorization and progress.
    ///
    /// Refused while an `xknock run` uses them: stop it first.
    Down {
        #[command(flatten)]
        pins: Pins,
    },
    /// Show sequences, sources in progress, authorized sources and counters.
    Status {
        #[command(flatten)]
        pins: Pins,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Authorize ADDR for a sequence as if it had knocked.
    Allow {
        /// The source address (IPv4 or IPv6).
        addr: IpAddr,
        /// The sequence whose protected ports open.
        #[arg(long)]
        sequence: String,
        /// How long (default: the sequence's open_for), e.g. 30s, 5m.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        pins: Pins,
    },
    /// Remove ADDR's authorizations (all, or one sequence's) and its kept connections.
    Revoke {
        /// The source address (IPv4 or IPv6).
        addr: IpAddr,
        #[arg(long)]
        sequence: Option<String>,
        #[command(flatten)]
        pins: Pins,
    },
    /// Lift ADDR's ban (brute-force lockout) and forget its failures.
    Unban {
        /// The source address (IPv4 or IPv6).
        addr: IpAddr,
        #[command(flatten)]
        pins: Pins,
    },
    /// Make the secret of a time-based knock sequence: the server's `secret_file`
    /// and the client's `xknock knock --secret` (the same file on both).
    ///
    /// Example: xknock secret --out ssh.secret --period 30s --knocks 3 --ports 20000-40000
    Secret {
        /// The new file (mode 0600; an existing file is never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// How long each period's knocks are valid.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        period: Duration,
        /// Knocks per sequence (1 to 8).
        #[arg(long, default_value_t = 3)]
        knocks: u8,
        /// The ports they are drawn from, LOW-HIGH (at least 256 of them).
        #[arg(long, default_value = "20000-40000", value_parser = xknock::timed::parse_range)]
        ports: std::ops::RangeInclusive<u16>,
        /// The knocks' protocol.
        #[arg(long, default_value = "udp", value_parser = ["tcp", "udp"])]
        proto: String,
    },
    /// Validate a configuration file and print what it sets up.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Send a knock sequence to HOST (no privileges needed).
    ///
    /// Example: xknock knock server.example 7000 8000/udp 9000
    ///
    /// With --secret, the knocks of a time-based sequence for the current period:
    /// xknock knock server.example --secret ssh.secret
    Knock {
        /// The server's name or address.
        host: String,
        /// PORT, PORT/tcp or PORT/udp (tcp when no protocol is given).
        #[arg(required_unless_present = "secret", conflicts_with = "secret", value_parser = parse_knock)]
        knocks: Vec<Knock>,
        /// A time-based sequence's secret file (`xknock secret` makes one): knock what
        /// it gives for now. This host's clock must be right within the server's grace.
        #[arg(long)]
        secret: Option<PathBuf>,
        /// Pause between knocks.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        delay: Duration,
        /// Send each knock this many times, a few ms apart. The server ignores a repeat
        /// of the knock it just accepted, so copies guard against lost packets, and
        /// during a flood of spoofed knocks the second copy marks this client's
        /// progress as in use, so that the server evicts the spoofed sources' first.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
        copies: u32,
        /// Use IPv4 only.
        #[arg(short = '4', conflicts_with = "ipv6")]
        ipv4: bool,
        /// Use IPv6 only.
        #[arg(short = '6')]
        ipv6: bool,
    },
    /// Send a Single Packet Authorization request (no privileges needed).
    ///
    /// One UDP datagram, encrypted and authenticated with the key file's key, asks the
    /// server to open sequences for this host's address. Nothing comes back, whatever
    /// the server decides: connect afterwards. The server refuses a request more than
    /// its window (30s by default) off its clock, so keep this host's clock right.
    ///
    /// Example: xknock spa server.example --key ~/.config/xknock/alice.key --open ssh
    Spa {
        /// The server's name or address [default: `server` in the key file].
        host: Option<String>,
        /// The client key file that `xknock keygen` wrote.
        #[arg(long)]
        key: PathBuf,
        /// What to open (repeatable): a sequence name, or PORT[/tcp|/udp] for every
        /// sequence the key may open that protects that port [default: everything the
        /// key may open].
        #[arg(long = "open", value_name = "SEQUENCE|PORT/PROTO", value_parser = parse_access)]
        open: Vec<Access>,
        /// How long to open for, up to the key's max_open on the server [default: the
        /// shortest open_for of the sequences opened].
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Open for this address instead of the one the request comes from; the server
        /// accepts another address only for a client with behind_nat = true.
        #[arg(long)]
        addr: Option<IpAddr>,
        /// The server's SPA port (UDP) [default: `port` in the key file, else 62201].
        #[arg(long)]
        port: Option<u16>,
        /// Use IPv4 only.
        #[arg(short = '4', conflicts_with = "ipv6")]
        ipv4: bool,
        /// Use IPv6 only.
        #[arg(short = '6')]
        ipv6: bool,
    },
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
    ImportKnockd {
        /// The knockd configuration.
        file: PathBuf,
        /// Write the TOML to this new file (never overwriting one) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make a key for a new SPA client.
    ///
    /// Prints the server's [[spa.client]] stanza on stdout (add it to the server's
    /// config), and writes the client's key file to --out (a new file, mode 0600), or
    /// prints that too when --out is not given. Both hold the secret key.
    ///
    /// Example: xknock keygen --name alice --sequence ssh --server server.example --out alice.key
    Keygen {
        /// The client's name on the server (in its events and logs).
        #[arg(long)]
        name: String,
        /// A sequence the client may open (repeatable).
        #[arg(long = "sequence", value_name = "NAME")]
        sequences: Vec<String>,
        /// The server's name or address, written into the key file.
        #[arg(long)]
        server: Option<String>,
        /// The server's SPA port, written into the key file.
        #[arg(long, default_value_t = spa::DEFAULT_PORT)]
        port: u16,
        /// Write the client's key file here (never overwriting a file) instead of
        /// printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_knock(s: &str) -> Result<Knock, String> {
    s.parse()
}

fn parse_access(s: &str) -> Result<Access, String> {
    spa::client::parse_access(s)
}

fn family(ipv4: bool, ipv6: bool) -> Family {
    match (ipv4, ipv6) {
        (true, _) => Family::V4,
        (_, true) => Family::V6,
        _ => Family::Any,
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = real_main() {
        eprintln!("xknock: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(opts) => run::run(opts),
        Command::Reload {
            pins: Pins { pin_dir },
        } => {
            let Some(pid) = pins::holder(&pin_dir)? else {
                bail!("no xknock run is using {}", pin_dir.display());
            };
            // SAFETY: a plain signal to the process holding the pin directory's lock.
            if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot signal pid {pid}"));
            }
            println!("asked xknock run (pid {pid}) to reload; it logs the outcome");
            Ok(())
        }
        Command::Down {
            pins: Pins { pin_dir },
        } => {
            let removed = pins::down(&pin_dir)?;
            if removed.is_empty() {
                println!("nothing of xknock's pinned in {}", pin_dir.display());
            }
            for path in removed {
                println!("removed {}", path.display());
            }
            Ok(())
        }
        Command::Status {
            pins: Pins { pin_dir },
            json,
        } => {
            let status = Status::read(&State::from_pins(&pin_dir)?)?;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(())
        }
        Command::Allow {
            addr,
            sequence,
            duration,
            pins: Pins { pin_dir },
        } => {
            let mut state = State::from_pins(&pin_dir)?;
            let seq = state.sequence_index(&sequence)?;
            let open_for = state
                .sequences()?
                .into_iter()
                .find(|(i, _)| *i == seq)
                .map(|(_, c)| Duration::from_nanos(c.open_for_ns))
                .unwrap_or_default();
            let duration = duration.unwrap_or(open_for);
            state.allow(addr, seq, duration)?;
            println!(
                "{addr} may connect to {sequence}'s ports for {}",
                xknock::clock::human(duration)
            );
            Ok(())
        }
        Command::Revoke {
            addr,
            sequence,
            pins: Pins { pin_dir },
        } => {
            let mut state = State::from_pins(&pin_dir)?;
            let n = match sequence {
                None => state.revoke(addr, None)?,
                // Every slot of it: a time-based sequence has two.
                Some(name) => state
                    .sequence_indices(&name)?
                    .into_iter()
                    .map(|seq| state.revoke(addr, Some(seq)))
                    .sum::<Result<usize>>()?,
            };
            println!("revoked {n} authorization(s) of {addr}");
            Ok(())
        }
        Command::Unban {
            addr,
            pins: Pins { pin_dir },
        } => {
            let was = State::from_pins(&pin_dir)?.unban(addr)?;
            println!(
                "{addr} {}",
                if was {
                    "is no longer banned"
                } else {
                    "was not banned"
                }
            );
            Ok(())
        }
        Command::Check { config } => {
            let cfg = Config::load(&config)?;
            println!("{}: ok", config.display());
            for (key, list) in [("allow", &cfg.allow), ("deny", &cfg.deny)] {
                if !list.is_empty() {
                    let nets: Vec<_> = list.iter().map(ToString::to_string).collect();
                    println!("  {key}: {}", nets.join(" "));
                }
            }
            for s in &cfg.sequences {
                let mut knocks: Vec<_> = s.knocks.iter().map(ToString::to_string).collect();
                if let Some(file) = &s.one_time {
                    knocks.push(match knocks.is_empty() {
                        true => format!("(every one-time sequence in {} is used)", file.display()),
                        false => format!("(one-time, from {})", file.display()),
                    });
                }
                if let Some(t) = &s.timed {
                    let proto = if t.secret.proto == knock_common::PROTO_UDP {
                        "udp"
                    } else {
                        "tcp"
                    };
                    knocks.push(format!(
                        "{} from {}-{}/{proto}, new every {} (grace {})",
                        t.secret.knocks,
                        t.secret.ports.start(),
                        t.secret.ports.end(),
                        xknock::clock::human(t.secret.period),
                        xknock::clock::human(t.grace)
                    ));
                }
                let protect: Vec<_> = s.protect.iter().map(ToString::to_string).collect();
                println!(
                    "  {}: knocks {} open {} for {}",
                    s.name,
                    knocks.join(" "),
                    protect.join(" "),
                    xknock::clock::human(s.open_for)
                );
                for (key, command) in [("on_open", &s.on_open), ("on_close", &s.on_close)] {
                    if let Some(command) = command {
                        println!("    {key}: {command}");
                    }
                }
            }
            if let Some(spa) = &cfg.spa {
                println!(
                    "  spa: requests to {}/udp, window {}, replay cache {}",
                    spa.port,
                    xknock::clock::human(spa.window),
                    spa.replay_file.display()
                );
                // Never the key: check's output ends up in terminals and tickets.
                for c in &spa.clients {
                    println!(
                        "    client {} (key id {}): may open {} for up to {}{}",
                        c.name,
                        c.key_id,
                        c.sequences.join(" "),
                        xknock::clock::human(c.max_open),
                        if c.behind_nat { ", behind NAT" } else { "" }
                    );
                }
            }
            Ok(())
        }
        Command::Secret {
            out,
            period,
            knocks,
            ports,
            proto,
        } => {
            let proto = if proto == "tcp" {
                knock_common::PROTO_TCP
            } else {
                knock_common::PROTO_UDP
            };
            let secret = TimedSecret::generate(period, knocks, ports, proto)?;
            secret.write_new(&out)?;
            eprintln!(
                "wrote {}: give it to the server as a sequence's secret_file and to clients for `xknock knock --secret`",
                out.display()
            );
            Ok(())
        }
        Command::Knock {
            host,
            knocks,
            secret,
            delay,
            copies,
            ipv4,
            ipv6,
        } => {
            let addr = client::resolve(&host, family(ipv4, ipv6))?;
            let knocks = match secret {
                None => knocks,
                Some(path) => {
                    let secret = TimedSecret::load(&path)?;
                    secret.knocks_for(secret.counter(std::time::SystemTime::now()))
                }
            };
            client::knock(addr, &knocks, delay, copies).with_context(|| format!("knocking on {host}"))
        }
        Command::Spa {
            host,
            key,
            open,
            duration,
            addr,
            port,
            ipv4,
            ipv6,
        } => {
            let client_key = ClientKey::load(&key)?;
            let Some(host) = host.or_else(|| client_key.server.clone()) else {
                anyhow::bail!("give HOST: the key file {} names no server", key.display());
            };
            let target = SocketAddr::new(
                client::resolve(&host, family(ipv4, ipv6))?,
                port.unwrap_or(client_key.port),
            );
            let what = if open.is_empty() {
                "everything the key may open".to_string()
            } else {
                let names: Vec<_> = open
                    .iter()
                    .map(|a| match a {
                        Access::Sequence(name) => name.clone(),
                        Access::Port(k) => k.to_string(),
                    })
                    .collect();
                names.join(" ")
            };
            let request = spa::client::request(open, duration, addr, SystemTime::now())?;
            let datagram = spa::client::seal(&client_key, &request)?;
            spa::client::send(target, &datagram).with_context(|| format!("sending to {host}"))?;
            println!(
                "sent a request to open {what} to {host} ({}, {}/udp); nothing comes back: connect now",
                target.ip(),
                target.port()
            );
            Ok(())
        }
        Command::ImportKnockd { file, out } => {
            let imported = xknock::knockd::import_file(&file)?;
            match &out {
                Some(path) => xknock::knockd::write_new(path, &imported.toml)?,
                None => print!("{}", imported.toml),
            }
            for note in &imported.notes {
                eprintln!("{note}");
            }
            let to = out.as_deref().unwrap_or(std::path::Path::new("FILE"));
            eprintln!(
                "imported {} sequence(s) from {}{}; {} thing(s) not translated{}; review, then: xknock check --config {}",
                imported.sequences,
                file.display(),
                out.as_ref()
                    .map(|p| format!(" into {}", p.display()))
                    .unwrap_or_default(),
                imported.notes.len(),
                if imported.notes.is_empty() {
                    ""
                } else {
                    " (above, and as comments in the TOML)"
                },
                to.display()
            );
            Ok(())
        }
        Command::Keygen {
            name,
            sequences,
            server,
            port,
            out,
        } => {
            if name.len() > 64 || !is_plain_name(&name) {
                anyhow::bail!("--name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'");
            }
            if let Some(s) = sequences.iter().find(|s| !is_plain_name(s)) {
                anyhow::bail!("--sequence {s:?} is not a sequence name");
            }
            let key = ClientKey {
                server,
                port,
                key_id: KeyId::random()?,
                key: Key::random()?,
            };
            println!("# Add to the server's config, then: xknock check --config FILE");
            print!("{}", key.server_stanza(&name, &sequences));
            match out {
                Some(path) => {
                    key.write_new(&path, &name)?;
                    // On stderr, so that stdout is the stanza alone.
                    eprintln!(
                        "wrote {name}'s key file {} (mode 0600): hand it over as privately as the key it is",
                        path.display()
                    );
                }
                None => {
                    println!(
                        "\n# Below: {name}'s key file. Save it with mode 0600, say as ~/.config/xknock/{name}.key"
                    );
                    print!("{}", key.to_toml(&name));
                }
            }
            Ok(())
        }
    }
}
