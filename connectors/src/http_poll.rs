//! The HTTP polling source (being written).
