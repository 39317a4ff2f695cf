//! fwknopd.conf: the interface, the SPA port and the packet age carry over; the rest
//! is about libpcap, firewall rules, NAT and logging, which xknock does differently.

use std::path::Path;

use anyhow::Result;

use super::{Entry, Note, error_at, parse_bool, parse_seconds};
use crate::spa;

/// fwknopd's MAX_SPA_PACKET_AGE default, in seconds.
pub(super) const FWKNOPD_PACKET_AGE: u64 = 120;
/// xknock's longest `spa.window`.
const MAX_WINDOW: u64 = 3600;

/// What fwknopd.conf says, each value with where it came from (a comment for the
/// TOML).
pub(super) struct Server {
    pub(super) interface: Option<(String, String)>,
    pub(super) port: (u16, String),
    pub(super) window: (u64, String),
}

impl Default for Server {
    fn default() -> Self {
        Server {
            interface: None,
            port: (
                spa::DEFAULT_PORT,
                "fwknopd's default port (udp port 62201)".into(),
            ),
            window: (
                FWKNOPD_PACKET_AGE,
                "fwknopd's default MAX_SPA_PACKET_AGE, 120 seconds (xknock's own default is 30s)".into(),
            ),
        }
    }
}

/// When a key is reported: always, or only when it turns on (or off) what xknock does
/// otherwise.
#[derive(Clone, Copy)]
enum When {
    Always,
    Yes,
    No,
}

const PCAP: &str = "xknock reads SPA requests in XDP on its interfaces, not with libpcap or NFQUEUE";
const TCP: &str = "xknock takes SPA requests over UDP only (the client's default, -P udp)";
const FIREWALL: &str =
    "xknock opens the protected ports in XDP itself: it adds no firewall rules, chains or NAT";
const LOGGING: &str = "xknock run prints its events on stdout (--json for JSON lines), which systemd's \
                       journal keeps (see dist/xknock.service)";
const PATHS: &str = "fwknopd's own files; xknock's are its config, spa.replay_file and its pin directory";
const COMMANDS: &str = "a sequence's on_open and on_close run a command with the client's address \
                        (%IP%): write them by hand, fwknop's variables differ";

/// The keys with no counterpart: a name or a prefix (ending in `_`), when to report
/// it, and why.
const OTHERS: &[(&str, When, &str)] = &[
    ("PCAP_", When::Always, PCAP),
    ("ENABLE_PCAP_PROMISC", When::Yes, PCAP),
    ("MAX_SNIFF_BYTES", When::Always, PCAP),
    ("ENABLE_NFQ_CAPTURE", When::Yes, PCAP),
    ("NFQ_", When::Always, PCAP),
    (
        "ENABLE_SPA_PACKET_AGING",
        When::No,
        "xknock always refuses a request older than spa.window (kept at fwknopd's MAX_SPA_PACKET_AGE)",
    ),
    (
        "ENABLE_DIGEST_PERSISTENCE",
        When::No,
        "xknock's replay cache always survives restarts (spa.replay_file)",
    ),
    (
        "DIGEST_",
        When::Always,
        "xknock keeps its own replay cache, spa.replay_file (default /var/lib/xknock/spa-replay); \
         fwknopd's digests are older than the window anyway",
    ),
    ("ENABLE_TCP_SERVER", When::Yes, TCP),
    ("TCPSERV_PORT", When::Always, TCP),
    ("ENABLE_SPA_OVER_HTTP", When::Yes, TCP),
    ("ENABLE_X_FORWARDED_FOR", When::Yes, TCP),
    ("ENABLE_NAT_DNS", When::Always, FIREWALL),
    ("ENABLE_RULE_PREPEND", When::Always, FIREWALL),
    ("ENABLE_FIREWD_", When::Always, FIREWALL),
    ("ENABLE_IPT_", When::Always, FIREWALL),
    ("FIREWD_", When::Always, FIREWALL),
    ("IPT_", When::Always, FIREWALL),
    ("FLUSH_", When::Always, FIREWALL),
    ("IPFW_", When::Always, FIREWALL),
    ("PF_", When::Always, FIREWALL),
    ("SNAT_TRANSLATE_IP", When::Always, FIREWALL),
    ("FIREWALL_EXE", When::Always, FIREWALL),
    ("ENABLE_EXTERNAL_CMDS", When::Yes, COMMANDS),
    ("EXTERNAL_CMD_", When::Always, COMMANDS),
    ("ENABLE_EXT_CMD_PREFIX", When::Yes, COMMANDS),
    ("EXT_CMD_PREFIX", When::Always, COMMANDS),
    (
        "GPG_",
        When::Always,
        "xknock takes fwknop's Rijndael requests (KEY_BASE64 and HMAC_KEY_BASE64), not GnuPG's",
    ),
    ("VERBOSE", When::Always, LOGGING),
    ("LOCALE", When::Always, LOGGING),
    ("SYSLOG_", When::Always, LOGGING),
    ("FWKNOP_", When::Always, PATHS),
    ("ACCESS_FILE", When::Always, PATHS),
];

/// Reads fwknopd.conf's entries into a `Server`, noting the rest.
pub(super) fn read(path: &Path, entries: &[Entry], notes: &mut Vec<Note>) -> Result<Server> {
    let mut server = Server::default();
    let note = |notes: &mut Vec<Note>, e: &Entry, why: String| {
        notes.push(Note {
            file: path.to_owned(),
            line: e.line,
            key: e.key.clone(),
            why,
        });
    };
    let udp_server = entries
        .iter()
        .rfind(|e| e.key == "ENABLE_UDP_SERVER")
        .is_some_and(|e| parse_bool(&e.value));
    let mut filter_port = None;
    let mut udpserv_port = None;
    for e in entries {
        let from = format!("{} {}, {} line {}", e.key, e.value, path.display(), e.line);
        match e.key.as_str() {
            "PCAP_INTF" => server.interface = Some((e.value.clone(), from)),
            "PCAP_FILTER" => match filter_udp_port(&e.value) {
                Some(port) => filter_port = Some((port, from)),
                None => note(
                    notes,
                    e,
                    format!(
                        "xknock listens on one UDP port (spa.port) and this filter names no single one; \
                         spa.port is {} unless you set it",
                        spa::DEFAULT_PORT
                    ),
                ),
            },
            "ENABLE_UDP_SERVER" => {}
            "UDPSERV_PORT" => {
                let port = e.value.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    error_at(path, e, format!("{:?} is not a port from 1 to 65535", e.value))
                })?;
                if udp_server {
                    udpserv_port = Some((port, from));
                } else {
                    note(
                        notes,
                        e,
                        "fwknopd uses it only with ENABLE_UDP_SERVER Y, which is not set: PCAP_FILTER's port is kept"
                            .into(),
                    );
                }
            }
            "MAX_SPA_PACKET_AGE" => {
                let age = parse_seconds(&e.value).map_err(|err| error_at(path, e, err))?;
                match u64::try_from(age) {
                    Ok(age @ 1..=MAX_WINDOW) => server.window = (age, from),
                    _ => note(
                        notes,
                        e,
                        format!(
                            "xknock's spa.window is from 1 second to {MAX_WINDOW}: kept at fwknopd's default, \
                             {FWKNOPD_PACKET_AGE}s"
                        ),
                    ),
                }
            }
            key => {
                let found = OTHERS.iter().find(|(k, _, _)| {
                    if k.ends_with('_') {
                        key.starts_with(k)
                    } else {
                        key == *k
                    }
                });
                match found {
                    Some((_, when, why)) => {
                        let report = match when {
                            When::Always => true,
                            When::Yes => parse_bool(&e.value),
                            When::No => !parse_bool(&e.value),
                        };
                        if report {
                            note(notes, e, (*why).to_string());
                        }
                    }
                    None => note(notes, e, "not a fwknopd.conf setting that xknock knows".into()),
                }
            }
        }
    }
    if let Some(port) = udpserv_port.or(filter_port) {
        server.port = port;
    }
    Ok(server)
}

/// The port a libpcap filter such as `udp port 62201` or `udp dst port 62201` names,
/// when it names exactly one (`portrange` and `or` name more).
fn filter_udp_port(filter: &str) -> Option<u16> {
    let words: Vec<&str> = filter.split_whitespace().collect();
    if words.iter().any(|w| {
        ["portrange", "or", "tcp"]
            .iter()
            .any(|x| w.eq_ignore_ascii_case(x))
    }) {
        return None;
    }
    let mut ports = words
        .windows(2)
        .filter(|w| w[0].eq_ignore_ascii_case("port"))
        .map(|w| w[1].parse::<u16>().ok().filter(|p| *p != 0));
    match (ports.next(), ports.next()) {
        (Some(port), None) => port,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_s_port() {
        assert_eq!(filter_udp_port("udp port 62202"), Some(62202));
        assert_eq!(filter_udp_port("udp dst port 40000"), Some(40000));
        assert_eq!(filter_udp_port("udp dst portrange 10000-65535"), None);
        assert_eq!(filter_udp_port("udp port 1 or udp port 2"), None);
        assert_eq!(filter_udp_port("tcp port 62201"), None);
        assert_eq!(filter_udp_port("udp"), None);
    }
}
