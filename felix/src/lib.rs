//! Dataplane programmer: desired state from the model, reconciled into kernel routes, links and nft rules.
