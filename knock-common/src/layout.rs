//! The pinned maps: their names, the layout version that tells whether a `run` may
//! adopt them, and the size every shared type must keep.

use bytemuck::{Pod, Zeroable};

/// Writes the pinned maps' names once: a constant each, and `ALL`.
macro_rules! map_names {
    ($($(#[$doc:meta])* $konst:ident = $name:literal,)*) => {
        $($(#[$doc])* pub const $konst: &str = $name;)*

        /// Every map, in the order a check reports them.
        pub const ALL: [&str; [$($name),*].len()] = [$($konst),*];
    };
}

/// Pinned map names: `bpftool map dump pinned PIN_DIR/<name>` shows each. The
/// kernel's maps are its statics of these names (knock-ebpf/src/maps.rs).
pub mod map_names {
    map_names! {
        META = "XK_META",
        SEQUENCES = "XK_SEQUENCES",
        PORT_RULES = "XK_PORT_RULES",
        SETTINGS = "XK_SETTINGS",
        PROGRESS = "XK_PROGRESS",
        AUTHORIZED = "XK_AUTHORIZED",
        FLOWS = "XK_FLOWS",
        COUNTERS = "XK_COUNTERS",
        EVENTS = "XK_EVENTS",
        BANS = "XK_BANS",
        ACCESS = "XK_ACCESS",
        AUTH_HINT = "XK_AUTH_HINT",
        SPA_KEYS = "XK_SPA_KEYS",
        SPA_BUDGETS = "XK_SPA_BUDGETS",
        SPA_REQUESTS = "XK_SPA_REQUESTS",
        SPA_CAP = "XK_SPA_CAP",
        STEP_EVENTS = "XK_STEP_EVENTS",
        EVENT_BUDGET = "XK_EVENT_BUDGET",
        SPENT = "XK_SPENT",
    }
}

/// The layout of the pinned maps: every key and value type above, their sizes and
/// meanings. Bump it with any change to them: a `run` adopts pinned maps only of its
/// own layout (`layout_snapshot` in the tests fails until it is bumped).
pub const LAYOUT_VERSION: u32 = 7;

/// Entry 0 of XK_META: what the pinned maps are. Written by the loader that created
/// them. Its own layout never changes: it is how the others' are told apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the xknock that created the maps (0: not yet written).
    pub layout: u32,
    pub _pad: u32,
    /// That xknock's version, NUL-padded.
    pub created_by: [u8; 24],
}

/// Every shared type's size: a change here is a change of layout.
const _: () = {
    use core::mem::size_of;

    use crate::{
        Authorization, Ban, Event, EventBudget, Flow, FlowKey, MAX_KNOCKS, MAX_PROTECTED, MAX_SEQUENCES,
        Meta, NAME_LEN, OneTimeId, PortProto, PortRule, Progress, SPA_CHECK_LEN, SPA_HEADER_LEN,
        SPA_KEY_ID_LEN, SPA_MAX_PAYLOAD, SPA_NONCE_LEN, SequenceConfig, Settings, SourceAddr, SourceKey,
        SpaBudget, SpaCap, SpaCheckKey, SpaKeyId, SpaRequest,
    };
    assert!(size_of::<Meta>() == 32);
    assert!(size_of::<PortProto>() == 4);
    assert!(size_of::<SequenceConfig>() == 32 + 4 * (MAX_KNOCKS + MAX_PROTECTED) + 8 + NAME_LEN + 16);
    assert!(size_of::<PortRule>() == 4);
    assert!(size_of::<Settings>() == 56);
    assert!(size_of::<SourceAddr>() == 16);
    assert!(size_of::<Ban>() == 24);
    assert!(size_of::<SourceKey>() == 20);
    assert!(size_of::<Progress>() == 24);
    assert!(size_of::<Authorization>() == 24);
    assert!(size_of::<OneTimeId>() == 8);
    assert!(size_of::<EventBudget>() == 16);
    assert!(size_of::<FlowKey>() == 24);
    assert!(size_of::<Flow>() == 16);
    assert!(size_of::<Event>() == 32);
    assert!(size_of::<SpaKeyId>() == SPA_KEY_ID_LEN);
    assert!(size_of::<SpaBudget>() == 16);
    assert!(size_of::<SpaCap>() == 16);
    assert!(size_of::<SpaCheckKey>() == 16);
    assert!(SPA_HEADER_LEN == 33 && SPA_CHECK_LEN * 3 == SPA_NONCE_LEN);
    assert!(size_of::<SpaRequest>() == 32 + SPA_MAX_PAYLOAD);
    assert!(MAX_SEQUENCES <= 8, "sequence masks are u8");
};
