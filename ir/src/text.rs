//! Text format (to be written).
