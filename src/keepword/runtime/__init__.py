"""keepword.runtime"""
