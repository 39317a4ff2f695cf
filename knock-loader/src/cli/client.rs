//! The client commands: `xknock knock` and `xknock spa` (no privileges needed).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use super::FamilyArgs;
use crate::{
    client::{self, spa::parse_access},
    net::KnockSpec,
    spa::{Access, ClientKey},
    timed::TimedSecret,
};

#[derive(clap::Args)]
pub struct KnockArgs {
    /// The server's name or address.
    pub host: String,
    /// PORT, PORT/tcp or PORT/udp (tcp when no protocol is given), or SIZE/icmp: an
    /// echo request with SIZE bytes of data, as `ping -s SIZE` sends (an unprivileged
    /// ICMP socket where net.ipv4.ping_group_range allows it, else a raw one). A
    /// `:pass` suffix, as the server's config writes passing knocks, is accepted and
    /// changes nothing: the packet is the same.
    #[arg(required_unless_present = "secret", conflicts_with = "secret", value_parser = parse_knock)]
    pub knocks: Vec<KnockSpec>,
    /// A time-based sequence's secret file (`xknock secret` makes one): knock what
    /// it gives for now. This host's clock must be right within the server's grace.
    #[arg(long)]
    pub secret: Option<PathBuf>,
    /// Pause between knocks.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// Send each knock this many times, a few ms apart. The server ignores a repeat
    /// of the knock it just accepted, so copies guard against lost packets, and
    /// during a flood of spoofed knocks the second copy marks this client's
    /// progress as in use, so that the server evicts the spoofed sources' first.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub copies: u32,
    #[command(flatten)]
    pub family: FamilyArgs,
}

#[derive(clap::Args)]
pub struct SpaArgs {
    /// The server's name or address [default: `server` in the key file].
    pub host: Option<String>,
    /// The client key file that `xknock keygen` wrote.
    #[arg(long)]
    pub key: PathBuf,
    /// What to open (repeatable): a sequence name, or PORT[/tcp|/udp] for every
    /// sequence the key may open that protects that port [default: everything the
    /// key may open].
    #[arg(long = "open", value_name = "SEQUENCE|PORT/PROTO", value_parser = parse_access)]
    pub open: Vec<Access>,
    /// How long to open for, up to the key's max_open on the server [default: the
    /// shortest open_for of the sequences opened].
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Open for this address instead of the one the request comes from; the server
    /// accepts another address only for a client with behind_nat = true.
    #[arg(long)]
    pub addr: Option<IpAddr>,
    /// The server's SPA port (UDP) [default: `port` in the key file, else 62201].
    #[arg(long)]
    pub port: Option<u16>,
    #[command(flatten)]
    pub family: FamilyArgs,
}

fn parse_knock(s: &str) -> Result<KnockSpec, String> {
    s.parse()
}

/// `xknock knock`: the knocks given, or a time-based secret's for now.
pub fn knock(args: KnockArgs) -> Result<()> {
    let addr = client::resolve(&args.host, args.family.family())?;
    let knocks = match &args.secret {
        None => args.knocks.iter().map(|s| s.knock).collect(),
        Some(path) => {
            let secret = TimedSecret::load(path)?;
            secret.knocks_for(secret.counter(SystemTime::now()))
        }
    };
    client::knock(addr, &knocks, args.delay, args.copies)
        .with_context(|| format!("knocking on {}", args.host))
}

/// `xknock spa`: one sealed request, sent; nothing comes back.
pub fn spa(args: SpaArgs) -> Result<()> {
    let client_key = ClientKey::load(&args.key)?;
    let Some(host) = args.host.or_else(|| client_key.server.clone()) else {
        bail!("give HOST: the key file {} names no server", args.key.display());
    };
    let target = SocketAddr::new(
        client::resolve(&host, args.family.family())?,
        args.port.unwrap_or(client_key.port),
    );
    let what = if args.open.is_empty() {
        "everything the key may open".to_string()
    } else {
        let names: Vec<_> = args.open.iter().map(ToString::to_string).collect();
        names.join(" ")
    };
    let request = client::spa::request(args.open, args.duration, args.addr, SystemTime::now())?;
    let datagram = client::spa::seal(&client_key, &request)?;
    client::spa::send(target, &datagram).with_context(|| format!("sending to {host}"))?;
    println!(
        "sent a request to open {what} to {host} ({}, {}/udp); nothing comes back: connect now",
        target.ip(),
        target.port()
    );
    Ok(())
}
