//! Making secrets: `xknock secret` (a time-based sequence's) and `xknock keygen` (an
//! SPA client's key).

use std::{ops::RangeInclusive, path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use crate::{
    config::is_plain_name,
    net::parse_proto,
    spa::{ClientKey, DEFAULT_PORT, Key, KeyId},
    timed::{TimedSecret, parse_range},
};

#[derive(clap::Args)]
pub struct SecretArgs {
    /// The new file (mode 0600; an existing file is never overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// How long each period's knocks are valid.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub period: Duration,
    /// Knocks per sequence (1 to 8).
    #[arg(long, default_value_t = 3)]
    pub knocks: u8,
    /// The ports they are drawn from, LOW-HIGH (at least 256 of them).
    #[arg(long, default_value = "20000-40000", value_parser = parse_range)]
    pub ports: RangeInclusive<u16>,
    /// The knocks' protocol.
    #[arg(long, default_value = "udp", value_parser = ["tcp", "udp"])]
    pub proto: String,
}

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// The client's name on the server (in its events and logs).
    #[arg(long)]
    pub name: String,
    /// A sequence the client may open (repeatable).
    #[arg(long = "sequence", value_name = "NAME")]
    pub sequences: Vec<String>,
    /// The server's name or address, written into the key file.
    #[arg(long)]
    pub server: Option<String>,
    /// The server's SPA port, written into the key file.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Write the client's key file here (never overwriting a file) instead of
    /// printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `xknock secret`: a new time-based secret file.
pub fn secret(args: SecretArgs) -> Result<()> {
    let Some(proto) = parse_proto(&args.proto) else {
        bail!("--proto {:?}: use tcp or udp", args.proto);
    };
    let secret = TimedSecret::generate(args.period, args.knocks, args.ports, proto)?;
    secret.write_new(&args.out)?;
    eprintln!(
        "wrote {}: give it to the server as a sequence's secret_file and to clients for `xknock knock --secret`",
        args.out.display()
    );
    Ok(())
}

/// `xknock keygen`: the server's stanza on stdout, the client's key file.
pub fn keygen(args: KeygenArgs) -> Result<()> {
    let name = &args.name;
    if name.len() > 64 || !is_plain_name(name) {
        bail!("--name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'");
    }
    if let Some(s) = args.sequences.iter().find(|s| !is_plain_name(s)) {
        bail!("--sequence {s:?} is not a sequence name");
    }
    let key = ClientKey {
        server: args.server,
        port: args.port,
        key_id: KeyId::random()?,
        key: Key::random()?,
    };
    println!("# Add to the server's config, then: xknock check --config FILE");
    print!("{}", key.server_stanza(name, &args.sequences));
    if let Some(path) = args.out {
        key.write_new(&path, name)?;
        // On stderr, so that stdout is the stanza alone.
        eprintln!(
            "wrote {name}'s key file {} (mode 0600): hand it over as privately as the key it is",
            path.display()
        );
    } else {
        println!("\n# Below: {name}'s key file. Save it with mode 0600, say as ~/.config/xknock/{name}.key");
        print!("{}", key.to_toml(name));
    }
    Ok(())
}
