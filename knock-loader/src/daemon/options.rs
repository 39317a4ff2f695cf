//! `run`'s command line and how it turns into a config.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Result, bail};

use super::metrics;
use crate::config::{Config, DEFAULT_CONFIG, XdpMode};

/// `run`'s command line: the config file, what overrides it, and how to run.
#[derive(Clone, Debug, clap::Args)]
pub struct RunOptions {
    /// The configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Interface to attach to (repeatable); overrides `interface` in the config.
    #[arg(long = "iface", short)]
    pub ifaces: Vec<String>,
    /// Where maps are pinned (on bpffs); overrides `pin_dir` in the config
    /// [default: /sys/fs/bpf/xknock].
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Attach mode; overrides `xdp_mode` in the config.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// Print events as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// On SIGINT/SIGTERM, exit leaving the filter attached (as after a crash):
    /// knocks and authorizations keep working, the next `run` takes over without
    /// a gap, `xknock down` removes it. For service managers and upgrades.
    #[arg(long)]
    pub keep_attached: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics: the kernel's counters,
    /// sources in progress, authorizations, bans, the tracking maps' entries and
    /// capacity, and the on_open/on_close commands' results. ADDR is PORT (on
    /// 127.0.0.1) or IP:PORT, e.g. 9464, 198.18.0.1:9464 or [::1]:9464.
    #[arg(long, value_name = "ADDR", value_parser = metrics::parse_addr)]
    pub metrics: Option<SocketAddr>,
}

impl RunOptions {
    /// Reads and validates the config file, with the command line's overrides.
    pub fn load(&self) -> Result<Config> {
        let mut config = Config::load(&self.config)?;
        if !self.ifaces.is_empty() {
            config.interfaces = self.ifaces.clone();
        }
        if let Some(dir) = &self.pin_dir {
            config.pin_dir = dir.clone();
        }
        if let Some(mode) = self.xdp_mode {
            config.xdp_mode = mode;
        }
        if config.interfaces.is_empty() {
            bail!("no interface: give --iface IFACE or set interface in the config");
        }
        Ok(config)
    }
}
