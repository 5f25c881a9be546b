"""keepword.adapters"""
