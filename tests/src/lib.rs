//! Multi-host tests in network namespaces: interop, end-to-end and faults.
