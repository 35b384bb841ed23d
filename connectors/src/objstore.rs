//! The object-store sink (being written).
