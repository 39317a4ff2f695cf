//! Configuration: what is accepted, what the kernel tables become, and that every
//! refusal names the file, the line and the key.

use std::{path::Path, time::Duration};

use knock_common::{
    PROTO_UDP, PortRule, SEQ_KEEP_ESTABLISHED, SEQ_STRICT, TCP_ACK, TCP_FIN, TCP_SYN, port_rule_index,
};
use xknock::{
    config::{Config, XdpMode},
    timed::TimedSecret,
};

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("/etc/xknock/test.toml"), text).map_err(|e| format!("{e:#}"))
}

fn refused(text: &str) -> String {
    parse(text).expect_err("config must be refused")
}

const SEQ: &str =
    "[[sequence]]\nname = \"ssh\"\nknocks = [\"7000/tcp\", \"8000/udp\", \"9000\"]\nprotect = [\"22/tcp\"]\n";

#[test]
fn the_example_config_is_valid() {
    let c = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/xknock.toml"))
        .expect("example config");
    assert_eq!(c.sequences[0].name, "ssh");
    assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/xknock"));
}

#[test]
fn defaults_and_kernel_tables() {
    let c = parse(&format!(
        "interface = [\"eth0\", \"eth1\"]\nxdp_mode = \"skb\"\n{SEQ}strict = true\n"
    ))
    .expect("valid");
    assert_eq!(c.interfaces, ["eth0", "eth1"]);
    assert_eq!(c.xdp_mode, XdpMode::Skb);
    let s = &c.sequences[0];
    assert_eq!(
        (
            s.open_for.as_secs(),
            s.step_timeout.as_secs(),
            s.sequence_timeout.as_secs()
        ),
        (30, 5, 15)
    );
    assert!(s.keep_established && s.strict);
    let k = s.kernel_config();
    assert_eq!((k.n_knocks, k.n_protect), (3, 1));
    assert_eq!(k.knocks[1].port, 8000);
    assert_eq!(k.knocks[2].proto, 6, "a bare port is TCP");
    assert_eq!(k.flags, SEQ_STRICT | SEQ_KEEP_ESTABLISHED);
    assert_eq!(
        (k.tcp_flags_set, k.tcp_flags_clear),
        (TCP_SYN, TCP_ACK),
        "default: SYN without ACK"
    );
    assert_eq!(&k.name[..4], b"ssh\0");
    let rules = c.port_rules(std::time::SystemTime::now());
    assert_eq!(
        rules[&port_rule_index(17, 8000).unwrap()],
        PortRule {
            knock_mask: 1,
            protect_mask: 0,
            strict_mask: 1,
            flags: 0
        },
        "the strict sequence's bit is in every rule"
    );
    assert_eq!(
        rules[&port_rule_index(6, 22).unwrap()],
        PortRule {
            knock_mask: 0,
            protect_mask: 1,
            strict_mask: 1,
            flags: 0
        }
    );
    assert!(
        !rules.contains_key(&port_rule_index(6, 8000).unwrap()),
        "8000/tcp is not 8000/udp"
    );
    assert_eq!(c.strict_mask(), 1);
    assert_eq!(
        (c.ban.failures, c.ban.window.as_secs(), c.ban.ban_for.as_secs()),
        (5, 60, 600),
        "bans on by default"
    );
    assert_eq!(c.ban.ipv6_prefix, 64, "IPv6 bans by /64 by default");
    let ignore = parse(&format!("{SEQ}wrong_knock = \"ignore\"\n[ban]\nfailures = 0\n")).expect("valid");
    assert!(ignore.sequences[0].ignore_wrong);
    assert_eq!(ignore.ban.failures, 0);
    assert_eq!(
        ignore.sequences[0].kernel_config().flags & knock_common::SEQ_IGNORE_WRONG,
        knock_common::SEQ_IGNORE_WRONG
    );
}

#[test]
fn commands_on_open_and_close() {
    let c = parse(&SEQ.replace(
        "protect = [\"22/tcp\"]\n",
        "protect = [\"22/tcp\", \"443/tcp\"]\non_open = \"/bin/echo 'opened for' %IP%\"\n\
         [commands]\ntimeout = \"3s\"\nmax_running = 2\nmax_queued = 0\n",
    ))
    .expect("valid");
    let s = &c.sequences[0];
    assert!(s.on_close.is_none());
    let vars = xknock::config::template::Vars {
        ip: "198.18.0.1",
        sequence: "ssh",
        ports: "22/tcp,443/tcp",
    };
    assert_eq!(
        s.on_open.as_ref().expect("on_open").argv(&vars),
        ["/bin/echo", "opened for", "198.18.0.1"]
    );
    assert_eq!(
        (
            c.commands.timeout.as_secs(),
            c.commands.max_running,
            c.commands.max_queued
        ),
        (3, 2, 0)
    );
    let d = parse(SEQ).expect("valid").commands;
    assert_eq!(
        (d.timeout.as_secs(), d.max_running, d.max_queued),
        (10, 4, 64),
        "defaults"
    );
}

#[test]
fn tcp_flags() {
    assert_eq!(
        xknock::config::parse_tcp_flags("syn,!ack"),
        Ok((TCP_SYN, TCP_ACK))
    );
    assert_eq!(xknock::config::parse_tcp_flags("fin"), Ok((TCP_FIN, TCP_ACK)));
    assert_eq!(
        xknock::config::parse_tcp_flags("syn,ack"),
        Ok((TCP_SYN | TCP_ACK, 0))
    );
    assert!(
        xknock::config::parse_tcp_flags("!syn").is_err(),
        "nothing required: every packet would knock"
    );
    assert!(xknock::config::parse_tcp_flags("syn,!syn").is_err());
    assert!(xknock::config::parse_tcp_flags("bogus").is_err());
}

#[test]
fn refusals_name_the_file_line_and_key() {
    let cases: Vec<(String, &str)> = vec![
        (format!("{SEQ}open_for = \"soon\"\n"), ":5: open_for:"),
        (
            format!("{SEQ}step_timeout = \"0s\"\n"),
            ":5: step_timeout: must be longer than zero",
        ),
        (SEQ.replace("\"9000\"", "\"70000/tcp\""), ":3: knocks:"),
        (SEQ.replace("\"9000\"", "\"0/udp\""), ":3: knocks:"),
        (
            SEQ.replace("\"9000\"", "\"9000/sctp\""),
            ":3: knocks: unknown protocol",
        ),
        (
            SEQ.replace("\"8000/udp\", \"9000\"", "\"7000/tcp\""),
            ":3: knocks: 7000/tcp twice in a row",
        ),
        (
            SEQ.replace("[\"22/tcp\"]", "[\"7000/tcp\"]"),
            ":4: protect: 7000/tcp is also a knock",
        ),
        (
            SEQ.replace("[\"22/tcp\"]", "[]"),
            ":4: protect: must list at least one",
        ),
        (SEQ.replace("name = \"ssh\"", "name = \"s s h\""), ":2: name:"),
        (format!("{SEQ}tcp_flags = \"syn,bogus\"\n"), ":5: tcp_flags:"),
        (
            format!("{SEQ}on_open = \"notify %IP%\"\n"),
            ":5: on_open: \"notify\" is not an absolute path",
        ),
        (
            format!("{SEQ}on_close = \"/bin/echo 'closed\"\n"),
            ":5: on_close: \"/bin/echo 'closed\" cannot be split into arguments",
        ),
        (format!("{SEQ}on_open = \"\"\n"), ":5: on_open: empty"),
        (
            format!("{SEQ}on_open = \"/usr/bin/%SEQUENCE%\"\n"),
            ":5: on_open: \"/usr/bin/%SEQUENCE%\": the program must be a fixed path",
        ),
        (
            format!("{SEQ}on_open = \"/nonexistent/notify %IP%\"\n"),
            ":5: on_open: /nonexistent/notify: No such file",
        ),
        (
            format!("{SEQ}on_open = \"/etc/passwd\"\n"),
            ":5: on_open: /etc/passwd is not an executable file",
        ),
        (
            format!("{SEQ}[commands]\nmax_running = 0\n"),
            ":6: commands.max_running: 0 is not from 1",
        ),
        (
            format!("{SEQ}[commands]\nmax_queued = -1\n"),
            ":6: commands.max_queued: -1 is not from 0",
        ),
        (
            format!("{SEQ}[commands]\ntimeout = \"0s\"\n"),
            ":6: commands.timeout: must be longer than zero",
        ),
        (
            format!("{SEQ}[commands]\nshell = true\n"),
            ":6: unknown field `shell`",
        ),
        (format!("{SEQ}colour = \"blue\"\n"), ":5: unknown field `colour`"),
        (
            format!("xdp_mode = \"turbo\"\n{SEQ}"),
            ":1: unknown variant `turbo`",
        ),
        (format!("{SEQ}{SEQ}"), ":6: name: a second sequence named \"ssh\""),
        (
            format!("{SEQ}{}", SEQ.replace("ssh", "other")),
            ":7: knocks: the same knocks as sequence \"ssh\"",
        ),
        (
            format!(
                "{SEQ}{}",
                SEQ.replace("ssh", "other")
                    .replace("[\"7000/tcp\", \"8000/udp\", \"9000\"]", "[\"1/tcp\"]")
                    .replace("22/tcp", "9000/tcp")
            ),
            ":8: protect: 9000/tcp is a knock of sequence \"ssh\"",
        ),
        ("interface = \"eth0\"\n".to_owned(), "no [[sequence]]"),
        (
            format!("{SEQ}wrong_knock = \"forgive\"\n"),
            ":5: unknown variant `forgive`, expected `reset` or `ignore`",
        ),
        (
            format!("{SEQ}[ban]\nwindow = \"0s\"\n"),
            ":6: ban.window: must be longer than zero",
        ),
        (format!("{SEQ}[ban]\nfailures = -1\n"), ":6: invalid value"),
        (
            format!("{SEQ}[ban]\nipv6_prefix = 0\n"),
            ":6: ban.ipv6_prefix: 0 is not a prefix length from 1 to 128",
        ),
        (
            format!("{SEQ}[ban]\nfailures = 3\nipv6_prefix = 129\n"),
            ":7: ban.ipv6_prefix: 129 is not a prefix length from 1 to 128",
        ),
        (
            format!("{SEQ}[ban]\nretries = 3\n"),
            ":6: unknown field `retries`",
        ),
    ];
    for (text, want) in cases {
        let err = refused(&text);
        assert!(
            err.starts_with("/etc/xknock/test.toml"),
            "error names the file: {err}"
        );
        assert!(
            err.contains(want),
            "for config\n{text}\nwanted {want:?} in: {err}"
        );
    }
    let nine: String = (0..9)
        .map(|i| {
            SEQ.replace("ssh", &format!("s{i}"))
                .replace("22/tcp", &format!("{}/tcp", 100 + i))
                .replace("7000/tcp", &format!("{}/tcp", 7000 + i))
        })
        .collect();
    assert!(refused(&nine).contains("at most 8 sequences"));
}

#[test]
fn an_ipv6_prefix_covering_the_ipv4_mapped_range_is_refused() {
    for (list, line, key) in [
        ("deny = [\"::/0\"]", 1, "deny"),
        ("allow = [\"::/1\"]", 1, "allow"),
        ("deny = [\"::/80\"]", 1, "deny"),
        ("deny = [\"::ffff:0:0/96\"]", 1, "deny"),
        ("allow = [\n  \"fd00::/8\",\n  \"::/64\",\n]", 3, "allow"),
        (
            "allow = [\"fd00::/8\"]\ndeny = [\"198.18.0.1\", \"0:0:0:0:0:ffff::/95\"]",
            2,
            "deny",
        ),
    ] {
        let err = refused(&format!("{list}\n{SEQ}"));
        let want = format!("/etc/xknock/test.toml:{line}: {key}: ");
        assert!(err.starts_with(&want), "{list}: wanted {want:?} in {err}");
        assert!(err.contains("covers ::ffff:0:0/96"), "{err}");
        assert!(err.contains("every IPv4 source"), "{err}");
    }
    // Prefixes that leave the mapped range out, and IPv4 prefixes of any length, pass.
    let c = parse(&format!(
        "allow = [\"2000::/3\", \"fc00::/7\", \"::ffff:198.18.0.0/112\", \"0.0.0.0/0\"]\n\
         deny = [\"8000::/1\", \"::/97\", \"fd00::/8\", \"198.18.0.0/15\"]\n{SEQ}"
    ))
    .expect("valid");
    assert_eq!(c.allow.len(), 4);
    assert_eq!(c.deny.len(), 4);
}

#[test]
fn a_public_port_that_is_also_a_knock_protected_or_spa_port_is_refused() {
    for (public, want) in [
        ("\"7000/tcp\"", "7000/tcp is a knock of sequence \"ssh\""),
        (
            "\"80/tcp\", \"22/tcp\"",
            "22/tcp is protected of sequence \"ssh\"",
        ),
        ("\"http\"", "\"http\" is not PORT/tcp"),
    ] {
        let err = refused(&format!("stealth = true\npublic = [{public}]\n{SEQ}"));
        assert!(err.contains(":2: public: "), "{err}");
        assert!(err.contains(want), "{public}: {err}");
    }
    let c = parse(&format!(
        "stealth = true\npublic = [\"80/tcp\", \"53/udp\"]\n{SEQ}"
    ))
    .expect("valid");
    assert_eq!(c.stealth.expect("on").public.len(), 2);
    assert!(parse(SEQ).expect("valid").stealth.is_none(), "off by default");
}

// [events]: the budget of per-packet events the kernel keeps.
#[test]
fn the_loader_turns_rate_and_burst_into_the_kernels_budget() {
    let parse = |events: &str| Config::parse(Path::new("t.toml"), &format!("{SEQ}{events}"));
    let s = parse("[events]\nrate = 4\nburst = 3\n")
        .expect("valid")
        .settings(Default::default());
    assert_eq!((s.event_cost_ns, s.event_burst_ns), (250_000_000, 750_000_000));
    let none = parse("[events]\nrate = 0\n").expect("valid");
    assert_eq!(none.settings(Default::default()).event_cost_ns, u64::MAX);
    let e = parse("[events]\nburst = 0\n").expect_err("burst 0");
    assert!(format!("{e:#}").contains("events.burst"), "{e:#}");
}

// Time-based sequences: what their port range rules out.
#[test]
fn time_based_sequences_are_refused_where_their_ports_are_ambiguous() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = TimedSecret::generate(Duration::from_secs(30), 3, 30000..=30999, PROTO_UDP).expect("secret");
    let file = dir.path().join("s.secret");
    secret.write_new(&file).expect("write");
    let timed = format!(
        "[[sequence]]\nname = \"door\"\nsecret_file = \"{}\"\nprotect = [\"2222/tcp\"]\n",
        file.display()
    );
    let cases = [
        (
            format!("{timed}knocks = [\"1/tcp\", \"2/tcp\"]\n"),
            "takes its knocks from the secret",
        ),
        (format!("{timed}grace = \"16s\"\n"), "more than half"),
        (
            format!(
                "{timed}[[sequence]]\nname = \"x\"\nknocks = [\"30500/udp\", \"1/tcp\"]\nprotect = [\"22/tcp\"]\n"
            ),
            "30500/udp is in the port range",
        ),
        (
            format!(
                "{timed}\n[spa]\nport = 30001\n[[spa.client]]\nname = \"a\"\nkey_id = \"0011223344556677\"\n\
                 key = \"{}\"\nsequences = [\"door\"]\n",
                "ab".repeat(32)
            ),
            "spa.port: 30001/udp is in the port range of time-based sequence",
        ),
        (
            "[[sequence]]\nname = \"x\"\nprotect = [\"22/tcp\"]\n".to_string(),
            "knocks: missing",
        ),
    ];
    for (toml, expected) in cases {
        let e = Config::parse(Path::new("/t.toml"), &toml).expect_err(expected);
        assert!(format!("{e:#}").contains(expected), "{expected}: {e:#}");
    }
}

#[test]
fn fleet_defaults_and_refusals() {
    let fleet = "[fleet]\nname = \"bastion-1\"\netcd = [\"http://198.18.0.5:2379/\"]\n";
    let c = parse(&format!("{SEQ}{fleet}")).expect("valid");
    let f = c.fleet.expect("[fleet]");
    assert_eq!(f.etcd, ["http://198.18.0.5:2379"], "a trailing / is dropped");
    assert_eq!(f.prefix, "/xknock");
    assert_eq!(f.share.len(), 3, "knock, spa and allow by default");
    assert_eq!(f.clock_skew, Duration::from_secs(2));
    assert_eq!(f.offline_spa, xknock::config::OfflineSpa::Local);
    assert!(f.tls.is_none());
    let c = parse(&format!(
        "{SEQ}{fleet}prefix = \"/fleets/a/\"\nshare = [\"spa\"]\noffline_spa = \"refuse\"\n"
    ))
    .expect("valid");
    let f = c.fleet.expect("[fleet]");
    assert_eq!(f.prefix, "/fleets/a");
    assert_eq!(f.share, [xknock::config::Shared::Spa]);
    for (extra, want) in [
        (
            "prefix = \"/\"\n",
            "test.toml:8: fleet.prefix: \"/\": a key prefix",
        ),
        ("prefix = \"x//y\"\n", "fleet.prefix"),
        (
            "share = [\"knock\", \"knock\"]\n",
            "test.toml:8: fleet.share: Knock twice",
        ),
        ("share = [\"ban\"]\n", "test.toml:8: unknown variant `ban`"),
        ("clock_skew = \"soon\"\n", "test.toml:8: fleet.clock_skew"),
        (
            "offline_spa = \"maybe\"\n",
            "test.toml:8: unknown variant `maybe`",
        ),
        (
            "cert_file = \"c.pem\"\n",
            "test.toml:8: fleet: give cert_file and key_file together",
        ),
        (
            "ca_file = \"ca.pem\"\n",
            "fleet.ca_file: TLS files, but the endpoints are http://",
        ),
        ("bans = true\n", "test.toml:8: unknown field `bans`"),
    ] {
        let e = refused(&format!("{SEQ}{fleet}{extra}"));
        assert!(e.contains(want), "{extra}: {e}");
    }
    for (etcd, want) in [
        ("[]", "test.toml:7: fleet.etcd: no endpoint"),
        ("[\"198.18.0.5:2379\"]", "is not a URL like"),
        ("[\"http://198.18.0.5\"]", "is not a URL like"),
        (
            "[\"https://198.18.0.5:2379\", \"http://198.18.0.6:2379\"]",
            "use one for all",
        ),
        ("[\"https://198.18.0.5:2379\"]", "fleet.ca_file: missing"),
    ] {
        let e = refused(&format!("{SEQ}[fleet]\nname = \"a\"\netcd = {etcd}\n"));
        assert!(e.contains(want), "{etcd}: {e}");
    }
    let e = refused(&format!(
        "{SEQ}[fleet]\nname = \"a b\"\netcd = [\"http://h:1\"]\n"
    ));
    assert!(e.contains("test.toml:6: fleet.name: \"a b\""), "{e}");
}

#[test]
fn passing_and_icmp_knocks_become_port_rules() {
    use knock_common::{PROTO_ICMP, RULE_PASS, RULE_PASS_ANY_TCP};
    let c = parse(
        "[[sequence]]\nname = \"web\"\nknocks = [\"443/tcp:pass\", \"80/tcp:pass\", \"64/icmp\", \"53/udp:pass\"]\nprotect = [\"22/tcp\"]\n\
         [[sequence]]\nname = \"fin\"\nknocks = [\"8443/tcp:pass\", \"0/icmp:pass\"]\nprotect = [\"2222/tcp\"]\ntcp_flags = \"fin\"\n",
    )
    .expect("valid");
    let web = &c.sequences[0];
    let ports: Vec<String> = web.knocks.iter().map(ToString::to_string).collect();
    assert_eq!(ports, ["443/tcp", "80/tcp", "64/icmp", "53/udp"]);
    let passing: Vec<String> = web.passing.iter().map(ToString::to_string).collect();
    assert_eq!(passing, ["443/tcp", "80/tcp", "53/udp"]);
    let k = web.kernel_config();
    assert_eq!((k.knocks[2].port, k.knocks[2].proto), (64, PROTO_ICMP));
    let rules = c.port_rules(std::time::SystemTime::now());
    let rule = |proto, port| rules[&port_rule_index(proto, port).expect("an index")];
    assert_eq!(
        rule(6, 443).flags,
        RULE_PASS,
        "SYNs only: the rest of a connection passes at once"
    );
    assert_eq!(rule(17, 53).flags, RULE_PASS);
    assert_eq!(
        rule(PROTO_ICMP, 64),
        PortRule {
            knock_mask: 1,
            ..PortRule::default()
        }
    );
    assert_eq!(
        rule(6, 8443).flags,
        RULE_PASS | RULE_PASS_ANY_TCP,
        "a FIN knock is no SYN"
    );
    assert_eq!(rule(PROTO_ICMP, 0).flags, RULE_PASS);
    assert_eq!(
        port_rule_index(PROTO_ICMP, 1453),
        None,
        "no rule for echoes too large to knock"
    );
}

#[test]
fn passing_and_icmp_knocks_are_refused_where_ambiguous() {
    let seq =
        |knocks: &str| format!("[[sequence]]\nname = \"s\"\nknocks = [{knocks}]\nprotect = [\"22/tcp\"]\n");
    let cases: Vec<(String, &str)> = vec![
        (
            seq("\"443/tcp:pass\""),
            ":3: knocks: only 443/tcp:pass: any visitor of that port sends it",
        ),
        (
            seq("\"443/tcp:pass\", \"80/tcp\", \"443/tcp\""),
            ":3: knocks: 443/tcp and 443/tcp:pass: a knock passes everywhere in the sequence or nowhere",
        ),
        (
            seq("\"443/tcp:open\""),
            ":3: knocks: \"443/tcp:open\": unknown suffix",
        ),
        (
            seq("\"1453/icmp\""),
            ":3: knocks: \"1453/icmp\": an ICMP knock is SIZE/icmp",
        ),
        (
            seq("\"x/icmp\""),
            ":3: knocks: \"x/icmp\": an ICMP knock is SIZE/icmp",
        ),
        (
            seq("\"64/icmp\", \"64/icmp\""),
            ":3: knocks: 64/icmp twice in a row",
        ),
        (
            seq("\"64/icmp\", \"7000\"").replace("[\"22/tcp\"]", "[\"64/icmp\"]"),
            ":4: protect: unknown protocol \"icmp\"",
        ),
        (
            format!(
                "{}[[sequence]]\nname = \"t\"\nknocks = [\"7000\", \"443/tcp\"]\nprotect = [\"23/tcp\"]\n",
                seq("\"443/tcp:pass\", \"64/icmp\"")
            ),
            ":7: knocks: 443/tcp passes in sequence \"s\" but not in \"t\": mark it :pass in both or in neither",
        ),
        (
            format!(
                "stealth = true\npublic = [\"443/tcp\"]\n{}",
                seq("\"443/tcp:pass\", \"64/icmp\"")
            ),
            ":2: public: 443/tcp is a knock of sequence \"s\"",
        ),
    ];
    for (text, expected) in cases {
        let e = refused(&text);
        assert!(e.contains(expected), "{text}\nexpected {expected:?} in: {e}");
    }
    // Passing knocks on two ports, or passing and ICMP: accepted (docs/knocks.md says
    // what they cost).
    parse(&seq("\"443/tcp:pass\", \"80/tcp:pass\"")).expect("two ports");
    parse(&seq("\"64/icmp:pass\", \"7000/tcp\"")).expect("a passing ICMP knock and a closed port");
}

#[test]
fn check_shows_passing_knocks_and_warns_when_every_knock_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("xknock.toml");
    std::fs::write(
        &file,
        "[[sequence]]\nname = \"web\"\nknocks = [\"443/tcp:pass\", \"64/icmp\"]\nprotect = [\"22/tcp\"]\n\
         [[sequence]]\nname = \"browse\"\nknocks = [\"80/tcp:pass\", \"443/tcp:pass\"]\nprotect = [\"2222/tcp\"]\n",
    )
    .expect("write");
    let out = std::process::Command::new(crate::xknock_bin())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("runs xknock");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("web: knocks 443/tcp:pass 64/icmp open 22/tcp"),
        "{stdout}"
    );
    assert!(
        stdout.contains("browse: knocks 80/tcp:pass 443/tcp:pass open 2222/tcp"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("warning: every knock passes").count(),
        1,
        "{stdout}"
    );
}
