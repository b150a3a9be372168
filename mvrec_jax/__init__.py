"""MVREC: few-shot defect multi-classification with AlphaCLIP, region-context views and Zip-Adapter(-F)."""
