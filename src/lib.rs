//! fdloop
