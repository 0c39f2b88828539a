//! rcr engine.
