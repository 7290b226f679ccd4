//! tokio driver around the FSM.
