"""LCDH: Lightweight Contrastive Distilled Hashing for online cross-modal retrieval (AAAI 2025)."""
