//! The schema registry's store: the subjects in `__sluice_schemas`, loaded on first use.
