//! Reef's resource types (CustomResource derives with schemas), their validation, and the Calico selector language.
