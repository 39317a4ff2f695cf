//! The verdict and event counters.

/// Writes the counters once: each variant's doc, index and name. The enum, the
/// count, the list in index order and the names all come from it.
macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident = $index:literal => $name:literal,)*) => {
        /// Verdict and event counters: indexes of the per-CPU counter array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[$doc])* $variant = $index,)*
        }

        /// Entries in the counter array.
        pub const COUNTERS: u32 = [$($index),*].len() as u32;

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: [Counter; COUNTERS as usize] = [$(Counter::$variant),*];

            /// Its name in `xknock status` and the metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }
        }

        const _: () = {
            let mut i = 0;
            while i < Counter::ALL.len() {
                assert!(Counter::ALL[i] as usize == i, "counters are numbered in order");
                i += 1;
            }
        };
    };
}

counters! {
    /// Not TCP, UDP or an ICMP knock over IP, or to a port nobody configured.
    PassOther = 0 => "pass_other",
    /// To a protected port from an authorized source.
    PassAuthorized = 1 => "pass_authorized",
    /// To a protected port on a connection kept from an earlier authorization.
    PassEstablished = 2 => "pass_established",
    /// A non-first fragment (its first fragment carried the verdict).
    PassFragment = 3 => "pass_fragment",
    /// To a knock port (every packet there is dropped, unless the knock passes).
    DropKnock = 4 => "drop_knock",
    /// To a protected port, not authorized.
    DropProtected = 5 => "drop_protected",
    /// Headers that could not be followed safely.
    DropUnparsed = 6 => "drop_unparsed",
    /// A fragment that could rewrite the L4 header of its first fragment (RFC 1858).
    DropFragment = 7 => "drop_fragment",
    /// Events a ring (XK_EVENTS or XK_STEP_EVENTS) had no room for.
    EventsLost = 8 => "events_lost",
    /// Completed sequences that found the authorization map full.
    AuthFull = 9 => "auth_full",
    /// Knock packets from banned sources (ignored).
    BannedKnock = 10 => "banned_knock",
    /// To a protected port from an `allow` source.
    PassAllowed = 11 => "pass_allowed",
    /// To a knock or protected port from a `deny` source.
    DropDenied = 12 => "drop_denied",
    /// SPA requests handed to `xknock run` (and dropped, like every packet to the SPA
    /// port).
    DropSpa = 13 => "drop_spa",
    /// To the SPA port but no request a client could have sent: empty, longer than
    /// SPA_MAX_PAYLOAD, another version, or an unknown key id.
    SpaRefused = 14 => "spa_refused",
    /// SPA requests over their source's budget (SPA_BUDGET per second).
    SpaShed = 15 => "spa_shed",
    /// SPA requests the ring buffer to `xknock run` had no room for.
    SpaLost = 16 => "spa_lost",
    /// IPv6 from an IPv4-mapped source (`::ffff:a.b.c.d`), which Linux drops too.
    DropMapped = 17 => "drop_mapped",
    /// A TCP SYN or UDP datagram to a port stealth hides (not public, not configured).
    DropStealth = 18 => "drop_stealth",
    /// Knock events not made: over the per-CPU event budget (`[events]`).
    SuppressedKnock = 19 => "suppressed_knock",
    /// Reset events not made, likewise.
    SuppressedReset = 20 => "suppressed_reset",
    /// Completed one-time sequences refused: the line was used (a replay).
    OneTimeSpent = 21 => "one_time_spent",
    /// To a passing knock port (`:pass`), passed: tracked as a knock, or (any source's)
    /// the rest of a connection to a port whose sequences count only SYNs. A listed
    /// source's SYNs and datagrams there count as `pass_other`.
    PassKnock = 22 => "pass_knock",
}
