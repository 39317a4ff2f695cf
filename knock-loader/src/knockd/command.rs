//! What a knockd command does, as far as it can be told from its words: an iptables
//! or nft rule that opens (or closes) ports to the knocker, a command that needs a
//! shell, or a plain command that xknock can run itself.

use knock_common::{MAX_PROTECTED, PROTO_TCP, PROTO_UDP};

use crate::net::Knock;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A firewall rule accepting the knocker's address on these ports; `note` says
    /// what had to be assumed.
    Open {
        ports: Vec<Knock>,
        note: Option<&'static str>,
    },
    /// A firewall command undoing such a rule; the ports when it names them.
    Close(Option<Vec<Knock>>),
    /// A firewall command whose effect cannot be read from it: why.
    Firewall(String),
    /// A command that only works through `sh -c` (as knockd runs it): why.
    Shell(String),
    /// A command xknock can run without a shell.
    Plain,
}

pub(super) fn classify(cmd: &str) -> Kind {
    if let Some(why) = needs_shell(cmd) {
        return Kind::Shell(why);
    }
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let Some(first) = words.first() else {
        return Kind::Plain;
    };
    let prog = first.rsplit('/').next().unwrap_or(first);
    if prog.starts_with("iptables") || prog.starts_with("ip6tables") {
        iptables(&words[1..])
    } else if prog == "nft" {
        nft(&words[1..])
    } else {
        Kind::Plain
    }
}

/// Why `cmd` needs a shell, if it does: knockd hands commands to `sh -c`, xknock runs
/// them directly (split at spaces), so pipes, lists, redirections, expansions, quotes
/// and globs would reach the program as literal words.
fn needs_shell(cmd: &str) -> Option<String> {
    const WHAT: [(&str, &str); 13] = [
        ("|", "a pipe"),
        ("&", "a list or a background job"),
        (";", "a list"),
        (">", "a redirection"),
        ("<", "a redirection"),
        ("$", "a $ expansion"),
        ("`", "a command substitution"),
        ("(", "a subshell"),
        ("\"", "quoting"),
        ("'", "quoting"),
        ("\\", "a backslash escape"),
        ("*", "a glob"),
        ("?", "a glob"),
    ];
    let found = WHAT
        .iter()
        .filter_map(|(c, what)| cmd.find(c).map(|at| (at, *c, *what)))
        .min_by_key(|(at, ..)| *at);
    if let Some((_, c, what)) = found {
        return Some(format!("needs a shell ({what}, `{c}`)"));
    }
    if cmd.split_whitespace().any(|w| w.starts_with('#')) {
        return Some("needs a shell (a # comment)".into());
    }
    if cmd.split_whitespace().any(|w| w.starts_with('~')) {
        return Some("needs a shell (~ for a home directory)".into());
    }
    None
}

/// The knocker's address as knockd writes it into commands.
fn is_knocker(word: &str) -> bool {
    matches!(word, "%IP%" | "%IP%/32" | "%IP%/128")
}

/// `-A|-I|-D CHAIN -s %IP% -p tcp|udp --dport N[:M] | -m multiport --dports A,B -j ACCEPT`
fn iptables(args: &[&str]) -> Kind {
    let unreadable = |why: &str| Kind::Firewall(format!("an iptables rule xknock cannot read ({why})"));
    let (mut action, mut source, mut accept) = (None, false, false);
    let (mut proto, mut ports, mut table) = (None, Vec::new(), None);
    let mut it = args.iter().copied();
    while let Some(arg) = it.next() {
        match arg {
            "-A" | "--append" | "-I" | "--insert" => action = Some(true),
            "-D" | "--delete" => action = Some(false),
            "-s" | "--source" | "--src" => source = it.next().is_some_and(is_knocker),
            "-p" | "--protocol" => {
                proto = match it.next() {
                    Some("tcp") => Some(PROTO_TCP),
                    Some("udp") => Some(PROTO_UDP),
                    _ => return unreadable("a protocol other than tcp or udp"),
                }
            }
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                match it.next().and_then(port_list) {
                    Some(p) => ports.extend(p),
                    None => return unreadable("its ports"),
                }
            }
            "-j" | "--jump" => accept = it.next() == Some("ACCEPT"),
            "!" => return unreadable("a negation"),
            "-t" | "--table" => table = it.next(),
            _ => {}
        }
    }
    match action {
        _ if table.is_some_and(|t| t != "filter") => unreadable("a table other than filter"),
        None => unreadable("neither -A, -I nor -D"),
        Some(_) if !source => unreadable("not for the knocker's address: no -s %IP%"),
        Some(_) if !accept => unreadable("no -j ACCEPT"),
        Some(_) if ports.is_empty() => unreadable("no --dport"),
        Some(open) => with_proto(open, proto, ports),
    }
}

/// `add|insert rule FAMILY TABLE CHAIN ip saddr %IP% tcp dport N|{ A, B } accept`; `delete`.
fn nft(args: &[&str]) -> Kind {
    let unreadable = |why: &str| Kind::Firewall(format!("an nft command xknock cannot read ({why})"));
    match args {
        ["delete" | "destroy", ..] => return Kind::Close(None),
        ["add" | "insert", "rule", ..] => {}
        ["add", "element", ..] => {
            return unreadable("it adds to a set: the ports are wherever the set is used");
        }
        _ => return unreadable("not add rule, insert rule or delete"),
    }
    let (mut source, mut proto, mut ports) = (false, None, Vec::new());
    for (i, w) in args.iter().enumerate() {
        match *w {
            "saddr" => source = args.get(i + 1).copied().is_some_and(is_knocker),
            "tcp" | "udp" if args.get(i + 1) == Some(&"dport") => {
                let p = if *w == "tcp" { PROTO_TCP } else { PROTO_UDP };
                if proto.replace(p).is_some_and(|q| q != p) {
                    return unreadable("both tcp and udp");
                }
                // A number, or a set `{ 22, 80 }` (its words up to `}`).
                let value = match args.get(i + 2) {
                    Some(&"{") => {
                        let set: Vec<&str> =
                            args[i + 3..].iter().take_while(|w| **w != "}").copied().collect();
                        set.join(",")
                    }
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                match port_list(value.trim_matches(['{', '}'])) {
                    Some(p) => ports.extend(p),
                    None => return unreadable("its ports"),
                }
            }
            "!=" => return unreadable("a negation"),
            _ => {}
        }
    }
    if !source {
        return unreadable("not for the knocker's address: no saddr %IP%");
    }
    if args.last() != Some(&"accept") {
        return unreadable("its verdict is not accept");
    }
    if ports.is_empty() {
        return unreadable("no dport");
    }
    with_proto(true, proto, ports)
}

/// `22`, `22,80`, `8000:8010` (iptables) or `8000-8010` (nft): the port numbers, as
/// long as they fit in a sequence's protected ports.
fn port_list(s: &str) -> Option<Vec<u16>> {
    let mut ports = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once([':', '-']).unwrap_or((part, part));
        let (lo, hi) = (lo.parse::<u16>().ok()?, hi.parse::<u16>().ok()?);
        if lo == 0 || hi < lo || usize::from(hi - lo) >= MAX_PROTECTED {
            return None;
        }
        ports.extend(lo..=hi);
    }
    (!ports.is_empty()).then_some(ports)
}

fn with_proto(open: bool, proto: Option<u8>, ports: Vec<u16>) -> Kind {
    let mut knocks: Vec<Knock> = ports
        .into_iter()
        .map(|port| Knock {
            port,
            proto: proto.unwrap_or(PROTO_TCP),
        })
        .collect();
    knocks.sort_by_key(|k| (k.proto, k.port));
    knocks.dedup();
    match (open, proto) {
        (false, _) => Kind::Close(Some(knocks)),
        (true, Some(_)) => Kind::Open {
            ports: knocks,
            note: None,
        },
        (true, None) => Kind::Open {
            ports: knocks,
            note: Some("no -p: tcp assumed"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(cmd: &str) -> Vec<String> {
        match classify(cmd) {
            Kind::Open { ports, .. } => ports.iter().map(ToString::to_string).collect(),
            other => panic!("{cmd}: {other:?}"),
        }
    }

    #[test]
    fn firewall_rules_for_the_knocker() {
        assert_eq!(
            open("/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"),
            ["22/tcp"]
        );
        assert_eq!(
            open("/usr/sbin/iptables -I INPUT 1 -s %IP% -p udp -m multiport --dports 53,60:61 -j ACCEPT"),
            ["53/udp", "60/udp", "61/udp"]
        );
        assert_eq!(
            classify("/sbin/iptables -A INPUT -s %IP% --dport 22 -j ACCEPT"),
            Kind::Open {
                ports: vec!["22/tcp".parse().unwrap()],
                note: Some("no -p: tcp assumed")
            },
            "knockd(1)'s own example has no -p"
        );
        assert_eq!(
            open("nft add rule inet filter input ip saddr %IP% tcp dport { 22, 443 } accept"),
            ["22/tcp", "443/tcp"]
        );
        assert_eq!(
            classify("/sbin/ip6tables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"),
            Kind::Close(Some(vec!["22/tcp".parse().unwrap()]))
        );
        assert_eq!(
            classify("nft delete rule inet filter input handle 7"),
            Kind::Close(None)
        );
    }

    #[test]
    fn what_is_not_a_rule_for_the_knocker() {
        for cmd in [
            "/usr/sbin/iptables -A INPUT -s %IP% -p tcp --syn -j ACCEPT",
            "/sbin/iptables -A INPUT -s 10.0.0.1 -p tcp --dport 22 -j ACCEPT",
            "/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j DROP",
            "/sbin/iptables -A INPUT -s %IP% -p icmp -j ACCEPT",
            "/sbin/iptables -A INPUT -s %IP% -p tcp --dport 1:1000 -j ACCEPT",
            "/sbin/iptables -t nat -A PREROUTING -s %IP% -p tcp --dport 22 -j ACCEPT",
            "nft add element inet filter knocked { %IP% }",
        ] {
            assert!(
                matches!(classify(cmd), Kind::Firewall(_)),
                "{cmd}: {:?}",
                classify(cmd)
            );
        }
        assert_eq!(
            classify("/usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%"),
            Kind::Plain
        );
    }

    #[test]
    fn shell_syntax_is_found() {
        for (cmd, want) in [
            (
                "iptables -A INPUT -s %IP% -j ACCEPT && logger ok",
                "list or a background job, `&`",
            ),
            ("echo %IP% >> /var/log/knocks", "redirection"),
            ("echo %IP% | mail root", "(a pipe, `|`)"),
            ("/bin/a; /bin/b", "(a list, `;`)"),
            ("logger \"knock from %IP%\"", "quoting"),
            ("logger $HOME", "$ expansion"),
            ("/usr/bin/logger knocked # by %IP%", "# comment"),
        ] {
            match classify(cmd) {
                Kind::Shell(why) => assert!(why.contains(want), "{cmd}: {why}"),
                other => panic!("{cmd}: {other:?}"),
            }
        }
        assert_eq!(classify("/usr/bin/logger -t knockd opened for %IP%"), Kind::Plain);
    }
}
