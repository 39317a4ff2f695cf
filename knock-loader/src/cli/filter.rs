//! Operating the running filter through its pinned state: `reload`, `down`,
//! `status`, `allow`, `revoke`, `unban`.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::Pins;
use crate::{
    clock::human,
    kernel::{maps::State, pins},
    status::Status,
};

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pins: Pins,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct AllowArgs {
    /// The source address (IPv4 or IPv6).
    pub addr: IpAddr,
    /// The sequence whose protected ports open.
    #[arg(long)]
    pub sequence: String,
    /// How long (default: the sequence's open_for), e.g. 30s, 5m.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub pins: Pins,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The source address (IPv4 or IPv6).
    pub addr: IpAddr,
    #[arg(long)]
    pub sequence: Option<String>,
    #[command(flatten)]
    pub pins: Pins,
}

#[derive(clap::Args)]
pub struct UnbanArgs {
    /// The source address (IPv4 or IPv6).
    pub addr: IpAddr,
    #[command(flatten)]
    pub pins: Pins,
}

/// `xknock reload`: SIGHUP to the `run` holding the pin directory's lock.
pub fn reload(pins: &Pins) -> Result<()> {
    let Some(pid) = pins::holder(&pins.pin_dir)? else {
        bail!("no xknock run is using {}", pins.pin_dir.display());
    };
    let pid = i32::try_from(pid).with_context(|| format!("pid {pid} out of range"))?;
    // SAFETY: a plain signal to the process holding the pin directory's lock.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot signal pid {pid}"));
    }
    println!("asked xknock run (pid {pid}) to reload; it logs the outcome");
    Ok(())
}

/// `xknock down`: removes the links, the program and the maps.
pub fn down(pins: &Pins) -> Result<()> {
    let removed = pins::down(&pins.pin_dir)?;
    if removed.is_empty() {
        println!("nothing of xknock's pinned in {}", pins.pin_dir.display());
    }
    for path in removed {
        println!("removed {}", path.display());
    }
    Ok(())
}

/// `xknock status`.
pub fn status(args: &StatusArgs) -> Result<()> {
    let status = Status::read(&State::from_pins(&args.pins.pin_dir)?, &args.pins.pin_dir)?;
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

/// `xknock allow`: an authorization as if ADDR had knocked.
pub fn allow(args: &AllowArgs) -> Result<()> {
    let mut state = State::from_pins(&args.pins.pin_dir)?;
    let seq = state.sequence_index(&args.sequence)?;
    let open_for = state
        .sequences()?
        .into_iter()
        .find(|(i, _)| *i == seq)
        .map(|(_, c)| Duration::from_nanos(c.open_for_ns))
        .unwrap_or_default();
    let duration = args.duration.unwrap_or(open_for);
    state.allow(args.addr, seq, duration)?;
    println!(
        "{} may connect to {}'s ports for {}",
        args.addr,
        args.sequence,
        human(duration)
    );
    Ok(())
}

/// `xknock revoke`.
pub fn revoke(args: &RevokeArgs) -> Result<()> {
    let mut state = State::from_pins(&args.pins.pin_dir)?;
    let n = match &args.sequence {
        None => state.revoke(args.addr, None)?,
        // Every slot of it: a time-based sequence has two.
        Some(name) => state
            .sequence_indices(name)?
            .into_iter()
            .map(|seq| state.revoke(args.addr, Some(seq)))
            .sum::<Result<usize>>()?,
    };
    println!("revoked {n} authorization(s) of {}", args.addr);
    Ok(())
}

/// `xknock unban`.
pub fn unban(args: &UnbanArgs) -> Result<()> {
    let was = State::from_pins(&args.pins.pin_dir)?.unban(args.addr)?;
    let what = if was {
        "is no longer banned"
    } else {
        "was not banned"
    };
    println!("{} {what}", args.addr);
    Ok(())
}
