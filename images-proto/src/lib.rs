//! rcr checkpoint images.
