//! Reef <-> GoBgp interop (cases in reef_tests::interop; matrix in docs/INTEROP.md).

use reef_lab::DaemonKind;
use reef_tests::interop::Setup;

reef_tests::interop_tests!(
    DaemonKind::GoBgp,
    [
        routes_ebgp(Setup::ebgp()),
        routes_ibgp(Setup::ibgp()),
        routes_ebgp_over_ipv6(Setup::ebgp_over_ipv6()),
        md5_right_key,
        md5_wrong_key,
        frozen_peer,
        restarted_peer,
        notification_from_peer,
        refresh_from_reef,
        // No refresh_from_peer: GoBGP cannot send a ROUTE-REFRESH (its softresetin is local).
    ]
);
