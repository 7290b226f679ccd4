//! Side-by-side benchmarks of Reef against BIRD, FRR, GoBGP and the reference CNI plugins.
