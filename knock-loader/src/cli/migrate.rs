//! Migration from other tools: `xknock import-knockd`.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::knockd;

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
