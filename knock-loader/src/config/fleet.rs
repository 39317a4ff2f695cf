//! `[fleet]`: the etcd cluster this host shares authorizations through, and what it
//! shares. The TLS files are read here, so that `check` proves them readable.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{is_plain_name, parse::Source};

/// What made an authorization, as a fleet shares it (fwknop's requests are `spa`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shared {
    Knock,
    Spa,
    Allow,
}

/// What a valid SPA request is when its nonce cannot be claimed fleet-wide (etcd
/// unreachable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflineSpa {
    /// Granted on this host's own replay cache: a copy captured on its way here
    /// could be replayed to another host until etcd is back.
    #[default]
    Local,
    /// Refused: no request is granted that the fleet could not see.
    Refuse,
}

/// A validated `[fleet]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fleet {
    /// This host's name in the fleet (the `origin` of what it publishes).
    pub name: String,
    /// etcd's client URLs, all `http://` or all `https://`.
    pub etcd: Vec<String>,
    /// Every key is under it: starts with `/`, no trailing `/`, no empty part.
    pub prefix: String,
    pub tls: Option<Tls>,
    /// What this host publishes; everything that arrives is installed alike.
    pub share: Vec<Shared>,
    /// How far the hosts' clocks may disagree: added to what a received
    /// authorization may claim.
    pub clock_skew: Duration,
    pub offline_spa: OfflineSpa,
}

/// TLS to etcd: the CA that signed its certificates, and this host's client
/// certificate, if etcd asks for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub ca_pem: String,
    pub identity: Option<(String, PrivatePem)>,
}

/// A private key (its Debug shows nothing).
#[derive(Clone, PartialEq, Eq)]
pub struct PrivatePem(pub String);

impl fmt::Debug for PrivatePem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivatePem(..)")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    name: Option<Spanned<String>>,
    etcd: Spanned<Vec<Spanned<String>>>,
    prefix: Option<Spanned<String>>,
    ca_file: Option<Spanned<PathBuf>>,
    cert_file: Option<Spanned<PathBuf>>,
    key_file: Option<Spanned<PathBuf>>,
    share: Option<Vec<Spanned<Shared>>>,
    clock_skew: Option<Spanned<String>>,
    #[serde(default)]
    offline_spa: OfflineSpa,
}

pub const DEFAULT_PREFIX: &str = "/xknock";
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(2);
const MAX_NAME: usize = 64;

pub(super) fn parse_fleet(src: &Source, raw: &Spanned<RawFleet>) -> Result<Fleet> {
    let r = raw.get_ref();
    let name = match &r.name {
        Some(n) => {
            let name = n.get_ref();
            if !is_plain_name(name) || name.len() > MAX_NAME {
                return Err(src.at(
                    n,
                    "fleet.name",
                    format!("{name:?}: at most {MAX_NAME} letters, digits, '-', '_' or '.'"),
                ));
            }
            name.clone()
        }
        None => hostname().ok_or_else(|| {
            src.at(
                raw,
                "fleet.name",
                "missing, and the hostname is not a plain name: set one",
            )
        })?,
    };
    let etcd = parse_endpoints(src, &r.etcd)?;
    let https = etcd.iter().all(|e| e.starts_with("https://"));
    let prefix = match &r.prefix {
        None => DEFAULT_PREFIX.to_owned(),
        Some(p) => check_prefix(p.get_ref()).map_err(|e| src.at(p, "fleet.prefix", e))?,
    };
    let tls = parse_tls(src, r, https)?;
    let mut share = vec![];
    for s in r.share.as_deref().unwrap_or(&[]) {
        if share.contains(s.get_ref()) {
            return Err(src.at(s, "fleet.share", format!("{:?} twice", s.get_ref())));
        }
        share.push(*s.get_ref());
    }
    if r.share.is_none() {
        share = vec![Shared::Knock, Shared::Spa, Shared::Allow];
    }
    Ok(Fleet {
        name,
        etcd,
        prefix,
        tls,
        share,
        clock_skew: src.duration(&r.clock_skew, "fleet.clock_skew", DEFAULT_CLOCK_SKEW)?,
        offline_spa: r.offline_spa,
    })
}

/// A key prefix as configured: starts with `/`, a trailing `/` is dropped, no empty
/// part, no spaces or control characters; `/` alone is not one (the fleet's keys
/// would be mixed with everything else in the cluster).
pub fn check_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim_end_matches('/');
    let plain = trimmed.chars().all(|c| c.is_ascii_graphic());
    if !trimmed.starts_with('/') || trimmed.contains("//") || !plain {
        return Err(format!(
            "{prefix:?}: a key prefix starts with '/', has no empty part and no spaces \
             (say \"/xknock\")"
        ));
    }
    Ok(trimmed.to_owned())
}

fn parse_endpoints(src: &Source, raw: &Spanned<Vec<Spanned<String>>>) -> Result<Vec<String>> {
    if raw.get_ref().is_empty() {
        return Err(src.at(raw, "fleet.etcd", "no endpoint: give etcd's client URLs"));
    }
    let mut urls = vec![];
    for e in raw.get_ref() {
        let url = e.get_ref();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or_default();
        let host_port = rest.strip_suffix('/').unwrap_or(rest);
        let valid = host_port
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
            && !host_port.contains(['/', '?', '#', '@'])
            && host_port.chars().all(|c| c.is_ascii_graphic());
        if !valid {
            return Err(src.at(
                e,
                "fleet.etcd",
                format!("{url:?} is not a URL like \"https://10.0.0.5:2379\""),
            ));
        }
        urls.push(format!("{}{host_port}", &url[..url.len() - rest.len()]));
    }
    let secure = urls.iter().filter(|u| u.starts_with("https://")).count();
    if secure != 0 && secure != urls.len() {
        return Err(src.at(
            raw,
            "fleet.etcd",
            "some endpoints are https:// and some http://: use one for all",
        ));
    }
    Ok(urls)
}

fn parse_tls(src: &Source, r: &RawFleet, https: bool) -> Result<Option<Tls>> {
    let dir = src.path.parent().unwrap_or(Path::new(""));
    let read = |f: &Spanned<PathBuf>, key: &str, private: bool| {
        let path = dir.join(f.get_ref());
        let text = if private {
            crate::secret_file::read_private(&path)
        } else {
            std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
        };
        text.map_err(|e| src.at(f, key, format!("{e:#}")))
    };
    let identity = match (&r.cert_file, &r.key_file) {
        (Some(c), Some(k)) => Some((
            read(c, "fleet.cert_file", false)?,
            PrivatePem(read(k, "fleet.key_file", true)?),
        )),
        (None, None) => None,
        (Some(f), None) | (None, Some(f)) => {
            return Err(src.at(f, "fleet", "give cert_file and key_file together"));
        }
    };
    match (&r.ca_file, https) {
        (Some(ca), true) => Ok(Some(Tls {
            ca_pem: read(ca, "fleet.ca_file", false)?,
            identity,
        })),
        (None, true) => Err(src.at(
            &r.etcd,
            "fleet.ca_file",
            "missing: https:// endpoints need the CA that signed etcd's certificate",
        )),
        (Some(f), false) => Err(src.at(f, "fleet.ca_file", "TLS files, but the endpoints are http://")),
        (None, false) if identity.is_some() => Err(src.at(
            &r.etcd,
            "fleet.cert_file",
            "TLS files, but the endpoints are http://",
        )),
        (None, false) => Ok(None),
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0)?;
    let name = std::str::from_utf8(&buf[..end]).ok()?;
    (is_plain_name(name) && name.len() <= MAX_NAME).then(|| name.to_owned())
}
