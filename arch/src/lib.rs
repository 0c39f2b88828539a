//! x86_64 facts as pure code.
