//! `xknock check`: validates a configuration and prints what it sets up.

use std::path::PathBuf;

use anyhow::Result;

use crate::{
    clock::human,
    config::{Config, Sequence},
    net::{KnockSpec, proto_name},
};

#[derive(clap::Args)]
pub struct CheckArgs {
    #[arg(long, short)]
    pub config: PathBuf,
}

pub fn check(args: &CheckArgs) -> Result<()> {
    let cfg = Config::load(&args.config)?;
    println!("{}: ok", args.config.display());
    for (key, list) in [("allow", &cfg.allow), ("deny", &cfg.deny)] {
        if !list.is_empty() {
            let nets: Vec<_> = list.iter().map(ToString::to_string).collect();
            println!("  {key}: {}", nets.join(" "));
        }
    }
    for s in &cfg.sequences {
        print_sequence(s);
    }
    if let Some(spa) = &cfg.spa {
        println!(
            "  spa: requests to {}/udp, window {}, replay cache {}",
            spa.port,
            human(spa.window),
            spa.replay_file.display()
        );
        // Never the key: check's output ends up in terminals and tickets.
        for c in &spa.clients {
            println!(
                "    client {} (key id {}): may open {} for up to {}{}",
                c.name,
                c.key_id,
                c.sequences.join(" "),
                human(c.max_open),
                if c.behind_nat { ", behind NAT" } else { "" }
            );
        }
        for c in &spa.fwknop {
            println!(
                "    fwknop client {} (HMAC {}): may open {} for up to {}{}",
                c.name,
                c.keys.digest,
                c.sequences.join(" "),
                human(c.max_open),
                if c.behind_nat { ", behind NAT" } else { "" }
            );
        }
    }
    Ok(())
}

fn print_sequence(s: &Sequence) {
    let mut knocks: Vec<_> = s
        .knocks
        .iter()
        .map(|k| {
            KnockSpec {
                knock: *k,
                pass: s.passing.contains(k),
            }
            .to_string()
        })
        .collect();
    if knocks.is_empty() && s.one_time.is_none() && s.timed.is_none() {
        knocks.push("none (only SPA and allow open it)".into());
    }
    if let Some(file) = &s.one_time {
        knocks.push(if knocks.is_empty() {
            format!("(every one-time sequence in {} is used)", file.display())
        } else {
            format!("(one-time, from {})", file.display())
        });
    }
    if let Some(t) = &s.timed {
        knocks.push(format!(
            "{} from {}-{}/{}, new every {} (grace {})",
            t.secret.knocks,
            t.secret.ports.start(),
            t.secret.ports.end(),
            proto_name(t.secret.proto),
            human(t.secret.period),
            human(t.grace)
        ));
    }
    let protect: Vec<_> = s.protect.iter().map(ToString::to_string).collect();
    println!(
        "  {}: knocks {} open {} for {}",
        s.name,
        knocks.join(" "),
        protect.join(" "),
        human(s.open_for)
    );
    if !s.knocks.is_empty() && s.knocks.iter().all(|k| s.passing.contains(k)) {
        println!(
            "    warning: every knock passes, so visitors of those ports can complete it in that order; \
             add a knock that does not pass (a closed port or SIZE/icmp)"
        );
    }
    for (key, command) in [("on_open", &s.on_open), ("on_close", &s.on_close)] {
        if let Some(command) = command {
            println!("    {key}: {command}");
        }
    }
}
