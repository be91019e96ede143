//! mock frontend
