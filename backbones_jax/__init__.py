"""Pretrained networks shared by the three methods (CLIP, AlphaCLIP, VGG) and their weight loaders."""
