//! One knockd door written as an xknock `[[sequence]]`, each key with a comment
//! saying where in knockd.conf it came from.

use knock_common::MAX_KNOCKS;

use super::{
    At, Door, Note,
    command::{Kind, classify},
    translate::{comment, line, list, note, quote},
};
use crate::{config::parse_tcp_flags, net::Knock};

/// knockd's defaults (SEQ_TIMEOUT and CMD_TIMEOUT in knockd.c), in seconds.
const KNOCKD_SEQ_TIMEOUT: u64 = 25;
const KNOCKD_CMD_TIMEOUT: u64 = 10;

/// Writes one door as a `[[sequence]]`.
pub(super) struct Stanza<'a> {
    pub(super) door: &'a Door,
    pub(super) notes: &'a mut Vec<Note>,
    pub(super) out: &'a mut String,
}

impl Stanza<'_> {
    fn note<T>(&mut self, at: &At<T>, why: String) {
        self.notes.push(note(at.line, &at.key, why));
    }

    pub(super) fn emit(
        &mut self,
        name: &str,
        (start, stop): &(Option<Kind>, Option<Kind>),
        closed_by: Option<&Door>,
    ) {
        let door = self.door;
        comment(self.out, format!("\n[{}], line {}", door.name, door.line));
        line(self.out, "[[sequence]]");
        line(self.out, format!("name = {}", quote(name)));
        self.knocks();
        let opened = self.start(start);
        self.stop(stop, opened.as_deref(), closed_by);
        self.timeout();
        self.tcp_flags();
        self.others(opened.as_deref());
    }

    /// The keys without an xknock counterpart. knockd's IPv6 commands need none when
    /// they add (or delete) the same rule as the IPv4 ones: protect covers both.
    fn others(&mut self, opened: Option<&[Knock]>) {
        for e in &self.door.others {
            let kind = e.value.as_deref().map(classify);
            let same = match (e.key.as_str(), &kind) {
                ("start_command_6" | "command_6", Some(Kind::Open { ports, .. })) => {
                    Some(&ports[..]) == opened
                }
                ("stop_command_6", Some(Kind::Close(ports))) => {
                    opened.is_some() && ports.as_deref().is_none_or(|p| Some(p) == opened)
                }
                _ => false,
            };
            if same {
                comment(
                    self.out,
                    format!(
                        "line {}, {}: the same rule for IPv6; xknock protects both",
                        e.line, e.key
                    ),
                );
                continue;
            }
            let why = match e.key.as_str() {
                "target" => {
                    "xknock sees what reaches this host's interface: knocks for another address \
                             have no equivalent"
                }
                "start_command_6" | "command_6" | "stop_command_6" => {
                    "xknock protects the same ports, and would run the same on_open and on_close, \
                     for IPv4 and IPv6 knockers"
                }
                "usesyslog" | "logfile" | "pidfile" | "interface" => "belongs in [options]",
                _ => "not a knockd key that xknock knows",
            };
            self.notes.push(note(e.line, &e.key, why.into()));
        }
    }

    fn knocks(&mut self) {
        let door = self.door;
        if let Some(f) = &door.one_time {
            comment(
                self.out,
                format!("line {}, {}: the same file format", f.line, f.key),
            );
            let path = f.value.to_string_lossy();
            line(self.out, format!("one_time_sequences = {}", quote(&path)));
            if let Some(s) = &door.sequence {
                self.note(
                    s,
                    "one_time_sequences replaces it (xknock takes one of the two)".into(),
                );
            }
            return;
        }
        let Some(s) = &door.sequence else { return };
        let knocks = &s.value;
        line(self.out, format!("knocks = {}", list(knocks)));
        if knocks.len() > MAX_KNOCKS {
            self.note(
                s,
                format!(
                    "{} knocks: xknock takes at most {MAX_KNOCKS} (xknock check refuses more)",
                    knocks.len()
                ),
            );
        }
        // knockd sees packets through libpcap, so its knocks on a port that serves
        // reach the server too; xknock drops knocks unless they are marked :pass.
        let mut services: Vec<String> = vec![];
        for k in knocks.iter().filter(|k| k.port < 1024).map(ToString::to_string) {
            if !services.contains(&k) {
                services.push(k);
            }
        }
        if !services.is_empty() {
            self.note(
                s,
                format!(
                    "knocks on {} also reached a server there under knockd, xknock drops them: \
                     if the port serves here, mark it :pass (docs/configuration.md, \
                     \"Passing and ICMP knocks\")",
                    services.join(", ")
                ),
            );
        }
        if let Some(w) = knocks.windows(2).find(|w| w[0] == w[1]) {
            self.note(
                s,
                format!(
                    "{} twice in a row: xknock could not tell a retransmission from the next knock \
                     (xknock check refuses it)",
                    w[0]
                ),
            );
        }
    }

    /// The start command: the ports it opens become `protect`. Returns them.
    fn start(&mut self, kind: &Option<Kind>) -> Option<Vec<Knock>> {
        let door = self.door;
        let placeholder = |out: &mut String| {
            line(
                out,
                "protect = []   # TODO: the ports this door opened, like [\"22/tcp\"]: xknock check refuses it empty",
            );
        };
        let (Some(cmd), Some(kind)) = (&door.start, kind) else {
            let at = At {
                line: door.line,
                key: format!("[{}]", door.name),
                value: (),
            };
            self.note(
                &at,
                "no command: nothing says which ports it opens: list them in protect".into(),
            );
            placeholder(self.out);
            return None;
        };
        comment(
            self.out,
            format!("line {}, {} = {}", cmd.line, cmd.key, cmd.value),
        );
        match kind {
            Kind::Open { ports, note } => {
                let assumed = note.map(|n| format!("   # {n}")).unwrap_or_default();
                line(self.out, format!("protect = {}{assumed}", list(ports)));
                return Some(ports.clone());
            }
            Kind::Plain => {
                line(self.out, format!("on_open = {}", quote(&cmd.value)));
                self.note(
                    cmd,
                    "no port to protect can be read from it: kept as on_open; list the ports it opens in protect"
                        .into(),
                );
            }
            Kind::Shell(why) => {
                line(self.out, format!("# on_open = {}", quote(&cmd.value)));
                self.note(
                    cmd,
                    format!(
                        "{why}, and xknock runs commands without one: commented out (put it in a script \
                         and give that as on_open); list the ports it opens in protect"
                    ),
                );
            }
            Kind::Firewall(why) => self.note(cmd, format!("{why}: list the ports it opens in protect")),
            Kind::Close(_) => unreachable!("a closing door is not a sequence"),
        }
        placeholder(self.out);
        None
    }

    /// The stop command and cmd_timeout: knockd runs it cmd_timeout after the start
    /// command, which is open_for; a command that deletes the start's rule is what
    /// xknock does itself when open_for ends.
    fn stop(&mut self, kind: &Option<Kind>, opened: Option<&[Knock]>, closed_by: Option<&Door>) {
        let door = self.door;
        let (Some(cmd), Some(kind)) = (&door.stop, kind) else {
            if let Some(t) = &door.cmd_timeout {
                self.note(
                    t,
                    "knockd uses it only with stop_command, and there is none".into(),
                );
            }
            let Some(cmd) = door.start.as_ref().filter(|_| opened.is_some()) else {
                return;
            };
            match closed_by {
                Some(c) => comment(
                    self.out,
                    format!(
                        "knockd left the port open until [{}] (line {}) was knocked; xknock opens it for\n\
                         open_for, and connections opened in that time stay up (keep_established).",
                        c.name, c.line
                    ),
                ),
                None => self.note(
                    cmd,
                    "knockd left the port open until something deleted the rule; xknock closes it after \
                     open_for (connections opened by then stay up): set open_for as long as needed"
                        .into(),
                ),
            }
            line(self.out, "open_for = \"30s\"");
            return;
        };
        comment(
            self.out,
            format!("line {}, {} = {}", cmd.line, cmd.key, cmd.value),
        );
        match kind {
            Kind::Close(ports) if opened.is_some() && ports.as_deref().is_none_or(|p| Some(p) == opened) => {
                comment(self.out, "(undoes the start command: xknock closes the ports itself when open_for ends)");
            }
            Kind::Close(_) | Kind::Open { .. } => self.note(
                cmd,
                "a firewall rule other than the start command's: xknock opens and closes the protected ports itself"
                    .into(),
            ),
            Kind::Firewall(why) => self.note(
                cmd,
                format!("{why}: xknock opens and closes the protected ports itself"),
            ),
            Kind::Plain => line(self.out, format!("on_close = {}", quote(&cmd.value))),
            Kind::Shell(why) => {
                line(self.out, format!("# on_close = {}", quote(&cmd.value)));
                self.note(
                    cmd,
                    format!(
                        "{why}, and xknock runs commands without one: commented out (put it in a script \
                         and give that as on_close)"
                    ),
                );
            }
        }
        match &door.cmd_timeout {
            Some(t) if t.value == 0 => self.note(t, "0 seconds: xknock opens for at least a moment".into()),
            Some(t) => {
                comment(
                    self.out,
                    format!(
                        "line {}, {} = {}: the stop command ran this long after the start",
                        t.line, t.key, t.value
                    ),
                );
                line(self.out, format!("open_for = \"{}s\"", t.value));
            }
            None => {
                comment(
                    self.out,
                    format!(
                        "knockd's default cmd_timeout: the stop command ran {KNOCKD_CMD_TIMEOUT}s after the start"
                    ),
                );
                line(self.out, format!("open_for = \"{KNOCKD_CMD_TIMEOUT}s\""));
            }
        }
    }

    /// seq_timeout: the whole sequence's time. knockd has no limit between two knocks,
    /// so step_timeout gets the same value (xknock's default, 5s, could refuse knocks
    /// that knockd took).
    fn timeout(&mut self) {
        let secs = match &self.door.seq_timeout {
            Some(t) if t.value == 0 => {
                self.note(
                    t,
                    "0 seconds: no sequence could be completed; xknock's default applies".into(),
                );
                return;
            }
            Some(t) => {
                comment(
                    self.out,
                    format!(
                        "line {}, {} = {}; knockd has no limit between two knocks",
                        t.line, t.key, t.value
                    ),
                );
                t.value
            }
            None => {
                comment(
                    self.out,
                    format!(
                        "knockd's default seq_timeout, {KNOCKD_SEQ_TIMEOUT}s; it has no limit between two knocks"
                    ),
                );
                KNOCKD_SEQ_TIMEOUT
            }
        };
        line(
            self.out,
            format!("sequence_timeout = \"{secs}s\"\nstep_timeout = \"{secs}s\""),
        );
    }

    /// knockd's tcpflags and xknock's tcp_flags read the same, except that xknock
    /// wants ACK clear unless named where knockd did not look at it.
    fn tcp_flags(&mut self) {
        let Some(f) = &self.door.tcp_flags else {
            comment(
                self.out,
                "no tcpflags: knockd counted any TCP packet; xknock's default counts a SYN without ACK,\n\
                 which is what knock clients send",
            );
            return;
        };
        let flags: String = f.value.to_ascii_lowercase().split_whitespace().collect();
        comment(self.out, format!("line {}, {} = {}", f.line, f.key, f.value));
        match parse_tcp_flags(&flags) {
            Ok(_) => {
                if !flags.contains("ack") {
                    comment(
                        self.out,
                        "(xknock also wants ACK clear unless named; a client's SYN has none)",
                    );
                }
                line(self.out, format!("tcp_flags = {}", quote(&flags)));
            }
            Err(e) => {
                self.note(f, format!("{e}: xknock's default (syn) applies"));
            }
        }
    }
}
