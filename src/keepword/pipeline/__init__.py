"""keepword.pipeline"""
