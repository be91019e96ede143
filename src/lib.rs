//! vhu-conform
