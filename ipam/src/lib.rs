//! Block IPAM on the datastore: pools cut into node-affine blocks, handles, borrowing, release and leak checks.
