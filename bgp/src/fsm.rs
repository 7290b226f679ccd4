//! RFC 4271 §8 session FSM (sans-IO).
