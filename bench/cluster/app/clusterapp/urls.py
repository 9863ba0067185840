from django.urls import path

from clusterapp import views

urlpatterns = [path("", views.index), path("items", views.items)]
