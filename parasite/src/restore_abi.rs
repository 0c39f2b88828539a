//! The arguments the engine hands to the restore-time restorer.
