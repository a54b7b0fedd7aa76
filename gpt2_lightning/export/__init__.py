"""The trained weights in a form to load elsewhere, and loading any of them back."""
