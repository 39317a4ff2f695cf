//! Migration from other tools: `xknock import-knockd` and `xknock import-fwknopd`.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{fwknopd, knockd};

#[derive(clap::Args)]
pub struct ImportKnockdArgs {
    /// The knockd configuration.
    pub file: PathBuf,
    /// Write the TOML to this new file (never overwriting one) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `xknock import-knockd`: the TOML, and on stderr what did not translate.
pub fn import_knockd(args: &ImportKnockdArgs) -> Result<()> {
    let imported = knockd::import_file(&args.file)?;
    match &args.out {
        Some(path) => knockd::write_new(path, &imported.toml)?,
        None => print!("{}", imported.toml),
    }
    for note in &imported.notes {
        eprintln!("{note}");
    }
    let to = args.out.as_deref().unwrap_or(Path::new("FILE"));
    eprintln!(
        "imported {} sequence(s) from {}{}; {} thing(s) not translated{}; review, then: xknock check --config {}",
        imported.sequences,
        args.file.display(),
        args.out
            .as_ref()
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

#[derive(clap::Args)]
pub struct ImportFwknopdArgs {
    /// fwknopd's access.conf (its clients' stanzas).
    pub access_conf: PathBuf,
    /// fwknopd.conf, for the port, the interface and MAX_SPA_PACKET_AGE.
    #[arg(long)]
    pub fwknopd_conf: Option<PathBuf>,
    /// Write the TOML to this new file (mode 0600, never overwriting one) instead of
    /// stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `xknock import-fwknopd`: the TOML, and on stderr what did not translate.
pub fn import_fwknopd(args: &ImportFwknopdArgs) -> Result<()> {
    let imported = fwknopd::import_files(&args.access_conf, args.fwknopd_conf.as_deref())?;
    match &args.out {
        Some(path) => fwknopd::write_new(path, &imported.toml)?,
        None => print!("{}", imported.toml),
    }
    for note in &imported.notes {
        eprintln!("{note}");
    }
    let to = args.out.as_deref().unwrap_or(Path::new("FILE"));
    let fill = if imported.fill_in == 0 {
        String::new()
    } else {
        format!(
            "; {} value(s) to fill in (marked __CHANGEME__ or FILL IN)",
            imported.fill_in
        )
    };
    eprintln!(
        "imported {} client(s) and {} sequence(s) from {}{}; {} thing(s) not translated{fill}; review, then: xknock check --config {}",
        imported.clients,
        imported.sequences,
        args.access_conf.display(),
        args.out
            .as_ref()
            .map(|p| format!(" into {}", p.display()))
            .unwrap_or_default(),
        imported.notes.len(),
        to.display()
    );
    Ok(())
}
