//! The command area shared by the engine and the dump-time parasite.
